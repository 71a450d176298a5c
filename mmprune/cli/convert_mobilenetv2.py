"""Convert torchvision's ImageNet MobileNetV2 weights to the mmdet or mmseg backbone.

    mmprune convert-mobilenetv2 mobilenet_v2-b0353104.pth \
        checkpoints/mobilenetv2_mmdet.pth --style mmdet      # or --style mmseg

torchvision names its layers ``features.N...``; mmdet's ``MobileNetV2`` names
them ``conv1``, ``layerK.J.{expand,depthwise,linear}_conv`` and ``conv2``, and
mmseg's ``conv1`` and ``layerK.J.conv.{0,1,2}`` (no final 1x1 conv). The output
holds backbone keys without prefix, for
``backbone.init_cfg=dict(type='Pretrained', checkpoint=OUT)``. The classifier is
dropped. Feed the backbone RGB images normalised with ImageNet's mean/std, as
torchvision does (``bgr_to_rgb=True``, mean 123.675/116.28/103.53, std
58.395/57.12/57.375).
"""
from __future__ import annotations

import argparse
import os.path as osp
import re
from collections import OrderedDict

# torchvision's blocks features.1..17 grouped into the seven mm stages (t, c, n, s table)
STAGE_BLOCKS = (1, 2, 3, 4, 3, 3, 1)
STYLES = ('mmdet', 'mmseg')


def _block_names(style: str, expand: bool) -> list[str]:
    if style == 'mmdet':
        names = ['expand_conv', 'depthwise_conv', 'linear_conv']
    else:
        names = ['conv.0', 'conv.1', 'conv.2']
    return names if expand else names[:2] if style == 'mmseg' else names[1:]


def key_map(style: str = 'mmdet') -> dict[str, str]:
    """torchvision module prefix -> mm module prefix, for every conv and BN."""
    if style not in STYLES:
        raise ValueError(f'style must be one of {STYLES}, got {style!r}')
    m = {'features.0.0': 'conv1.conv', 'features.0.1': 'conv1.bn'}
    idx = 1
    for stage, n in enumerate(STAGE_BLOCKS, start=1):
        for j in range(n):
            expand = idx != 1           # the first block has expand ratio 1
            names = _block_names(style, expand)
            tv = ([('conv.0.0', 'conv.0.1'), ('conv.1.0', 'conv.1.1'), ('conv.2', 'conv.3')]
                  if expand else [('conv.0.0', 'conv.0.1'), ('conv.1', 'conv.2')])
            for (c, b), name in zip(tv, names):
                m[f'features.{idx}.{c}'] = f'layer{stage}.{j}.{name}.conv'
                m[f'features.{idx}.{b}'] = f'layer{stage}.{j}.{name}.bn'
            idx += 1
    if style == 'mmdet':
        m['features.18.0'] = 'conv2.conv'
        m['features.18.1'] = 'conv2.bn'
    return m


def convert(tv_state: dict, style: str = 'mmdet') -> OrderedDict:
    """Rename a torchvision ``mobilenet_v2`` state_dict for the mm backbone."""
    mapping = key_map(style)
    out = OrderedDict()
    for key, value in tv_state.items():
        if key.startswith('classifier.'):
            continue
        mod, param = re.match(r'(.*)\.([^.]+)$', key).groups()
        if mod not in mapping:
            if style == 'mmseg' and mod.startswith('features.18.'):
                continue                # mmseg's backbone ends at layer7
            raise KeyError(f'{key}: not a torchvision MobileNetV2 key (is this the right file?)')
        out[f'{mapping[mod]}.{param}'] = value
    missing = sorted(set(mapping.values()) - {k.rsplit('.', 1)[0] for k in out})
    if missing:
        raise KeyError(f'{len(missing)} backbone layers have no weights in the file, '
                       f'e.g. {missing[0]} (is this torchvision\'s mobilenet_v2?)')
    return out


def main(argv=None) -> None:
    import torch

    from mmprune.checkpoint import atomic_write
    p = argparse.ArgumentParser(prog='mmprune convert-mobilenetv2',
                                description=__doc__.split('\n')[0])
    p.add_argument('src', help="torchvision weights, e.g. mobilenet_v2-b0353104.pth")
    p.add_argument('dst', help='output checkpoint (backbone keys, no prefix)')
    p.add_argument('--style', choices=STYLES, default='mmdet')
    p.add_argument('--overwrite', action='store_true')
    args = p.parse_args(argv)
    state = torch.load(args.src, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state)
    out = convert(state, args.style)
    meta = dict(source=osp.basename(args.src), style=args.style, converter='mmprune')
    try:
        atomic_write(args.dst, lambda f: torch.save(dict(state_dict=out, meta=meta), f),
                     overwrite=args.overwrite)
    except FileExistsError as e:
        raise SystemExit(str(e))
    print(f'{len(out)} tensors written to {args.dst} ({args.style} MobileNetV2)')


if __name__ == '__main__':
    main()
