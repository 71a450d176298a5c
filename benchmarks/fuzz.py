"""Fuzz ``mmprune.prune``: random options over detector and segmenter families.

    python benchmarks/fuzz.py [--cases 200] [--seed 0] [--families a b ...] [--shape 128 128]
                              [--out benchmarks/results/fuzz_DATE.json]

Each case draws a family and random options: ratio (sometimes outside [0, 1)
or not a number), criterion (sometimes unknown), ``round_to``, global pruning,
iterative steps, ``target_flops`` (sometimes 1.0 or 0.1) with or without ``max_pruning_ratio``,
per-layer ratios on real or unknown layer patterns, ignored layers. Every case
must end one of two ways:

* ``ok``: a valid model: tensor outputs keep their shapes, loss + backward and
  predict run, and a model rebuilt from the structure reproduces the outputs
  (the checks of ``benchmarks/coverage.py``);
* ``error``: one exception, and the model is exactly as before (state_dict
  values and every module's attributes and tensor shapes compared).

Anything else counts as ``broken`` (pruned but a check fails) or
``error_changed`` (an exception that left the model modified); the run exits
1 if there is any. Models are built once per family (random init, nothing
downloaded) and deep-copied for each case. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: ten zoo families (five detectors, five segmenters) plus the project's own configs
FAMILIES = (
    'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
    'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'mmdet::yolox/yolox_tiny_8xb8-300e_coco.py',
    'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'mmseg::pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'mmseg::deeplabv3plus/deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'mmseg::upernet/upernet_r18_4xb2-40k_cityscapes-512x1024.py',
    'mmseg::bisenetv1/bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024.py',
    'configs/bccd/retinanet_mbv2_fpn_bccd.py',
    'configs/camvid/fpn_mbv2_camvid.py',
)
CRITERIA = ('l1', 'l2', 'group_l1', 'group_l2', 'bn_scale', 'lamp', 'fpgm', 'random', 'taylor',
            'group_taylor', 'hessian', 'group_hessian')
OUTCOMES = ('ok', 'error', 'broken', 'error_changed')


def draw(rng: random.Random, family: str, layer_names: list) -> dict:
    """Random options for one case; about one case in five has a deliberate bad input."""
    opts: dict = dict(pruning_ratio=round(rng.uniform(0.0, 0.8), 3),
                      importance=rng.choice(CRITERIA))
    if rng.random() < 0.3:
        opts['round_to'] = rng.choice([2, 4, 8, 16, 3])
    if rng.random() < 0.3:
        opts['global_pruning'] = True
    if rng.random() < 0.3:
        opts['iterative_steps'] = rng.choice([2, 3])
    if rng.random() < 0.2:
        # mostly mid-range; sometimes the edges: the dense model itself, or deeper than
        # rounded channel counts reach
        opts['target_flops'] = rng.choice([round(rng.uniform(0.3, 0.9), 3)] * 4 + [1.0, 0.1])
        if rng.random() < 0.5:
            opts['max_pruning_ratio'] = round(rng.uniform(0.1, 0.9), 3)
    if rng.random() < 0.3:
        prefix = rng.choice(sorted({n.split('.')[0] for n in layer_names}))
        pattern = rng.choice([f'{prefix}.*', rng.choice(layer_names)])
        opts['pruning_ratio_dict'] = {pattern: round(rng.uniform(0.0, 0.8), 3)}
    if rng.random() < 0.3:
        opts['ignored_layers'] = rng.sample(layer_names, k=min(len(layer_names), rng.randint(1, 3)))
    bad = rng.random() < 0.2
    if bad:  # one deliberate bad input
        kind = rng.choice(['ratio', 'importance', 'layer', 'ratio_dict', 'round_to', 'steps'])
        if kind == 'ratio':
            opts['pruning_ratio'] = rng.choice([1.0, -0.1, 1.5, 'half', float('nan')])
        elif kind == 'importance':
            opts['importance'] = rng.choice(['nope', dict(type='l1', nope=1)])
        elif kind == 'layer':
            opts['ignored_layers'] = ['backbone.no_such_layer']
        elif kind == 'ratio_dict':
            opts['pruning_ratio_dict'] = {'neck.nope*': 0.5}
        elif kind == 'round_to':
            opts['round_to'] = rng.choice([0, -4, 2.5])
        else:
            opts['iterative_steps'] = rng.choice([0, -1])
    return dict(family=family, options=opts, bad_input=bad)


class Template:
    """A family's dense model, built once, with its example batch and output shapes."""

    def __init__(self, config: str, shape):
        from coverage import build, dense_run
        self.model, self.cfg = build(config, shape)
        self.shape = tuple(shape)
        self.batch, _, self.dense_out = dense_run(self.model, self.cfg, self.shape)
        import torch.nn as nn
        self.layers = [n for n, m in self.model.named_modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear)) and n]


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unchanged(model, state: dict, before: dict) -> bool:
    """Same tensors (values and shapes) and the same module attributes as before."""
    import torch

    from mmprune.structure import snapshot
    now = model.state_dict()
    if now.keys() != state.keys():
        return False
    if not all(now[k].shape == v.shape and torch.equal(now[k], v) for k, v in state.items()):
        return False
    return snapshot(model) == before


def run_case(case: dict, template: Template) -> dict:
    import torch

    import mmprune
    from coverage import check_pruned
    from mmprune.structure import snapshot
    model = copy.deepcopy(template.model)
    state, before = _state(model), snapshot(model)
    rec = dict(case, outcome=None, reason=None)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    try:
        result = mmprune.prune(model, cfg=template.cfg, input_shape=template.shape,
                               **case['options'])
    except Exception as e:  # noqa: BLE001 - every error is classified
        rec['reason'] = f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
        rec['outcome'] = 'error' if unchanged(model, state, before) else 'error_changed'
        rec['seconds'] = round(time.perf_counter() - t0, 2)
        return rec
    rec['flops_ratio'] = round(result.flops[1] / result.flops[0], 4)
    stage = None
    try:
        for stage in check_pruned(model, template.cfg, result.structure, template.batch,
                                  template.dense_out, template.shape):
            pass
        rec['outcome'] = 'ok'
    except Exception as e:  # noqa: BLE001
        rec['outcome'] = 'broken'
        rec['reason'] = f'{stage}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
        rec['trace'] = traceback.format_exc()[-2000:]
    rec['seconds'] = round(time.perf_counter() - t0, 2)
    return rec


def fuzz(cases: int, seed: int = 0, families=FAMILIES, shape=(128, 128), log=print) -> list:
    """Run ``cases`` random cases; returns their records."""
    from mmengine.logging import MessageHub
    for key in ('iter', 'epoch'):  # losses with warm-up read them
        MessageHub.get_current_instance().update_info(key, 0)
    rng = random.Random(seed)
    templates: dict = {}
    records = []
    for i in range(cases):
        family = families[i % len(families)] if i < len(families) else rng.choice(families)
        if family not in templates:
            config = family if '::' in family else os.path.join(ROOT, family)
            try:
                templates[family] = Template(config, shape)
            except Exception as e:  # noqa: BLE001 - a family the host cannot run is skipped
                templates[family] = f'{type(e).__name__}: {e}'
        template = templates[family]
        if isinstance(template, str):
            records.append(dict(family=family, outcome='skipped', reason=template))
            continue
        case = draw(rng, family, template.layers)
        rec = run_case(case, template)
        records.append(rec)
        log(f'[{i + 1}/{cases}] {rec["outcome"]:13s} {short(family):28s} '
            f'{rec.get("seconds", 0):6.1f}s {json.dumps(case["options"], default=str)[:150]}'
            + (f'\n      {rec["reason"]}' if rec['reason'] else ''))
    return records


def short(family: str) -> str:
    return os.path.basename(family).split('_')[0] if '::' in family else \
        os.path.splitext(os.path.basename(family))[0]


def summary(records: list) -> str:
    fams = sorted({r['family'] for r in records})
    head = f'| family | cases | {" | ".join(OUTCOMES)} | skipped |'
    lines = [head, '|' + '---|' * (len(OUTCOMES) + 3)]
    for fam in fams + [None]:
        rs = [r for r in records if fam is None or r['family'] == fam]
        counts = [sum(r['outcome'] == o for r in rs) for o in OUTCOMES + ('skipped',)]
        name = 'all' if fam is None else short(fam)
        lines.append(f'| {name} | {len(rs)} | ' + ' | '.join(map(str, counts)) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--cases', type=int, default=200)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--families', nargs='+', default=list(FAMILIES))
    p.add_argument('--shape', type=int, nargs=2, default=(128, 128))
    p.add_argument('--out', default=os.path.join(
        ROOT, 'benchmarks', 'results', f'fuzz_{time.strftime("%Y-%m-%d")}.json'))
    args = p.parse_args(argv)
    t0 = time.time()
    records = fuzz(args.cases, args.seed, tuple(args.families), tuple(args.shape))
    table = summary(records)
    print('\n' + table)
    bad = [r for r in records if r['outcome'] in ('broken', 'error_changed')]
    print(f'\n{len(records)} cases in {time.time() - t0:.0f} s: '
          f'{sum(r["outcome"] == "broken" for r in records)} broken models, '
          f'{sum(r["outcome"] == "error_changed" for r in records)} errors that changed the model')
    from mmprune.checkpoint import atomic_write
    from coverage import COMMIT
    payload = dict(commit=COMMIT, seed=args.seed, cases=args.cases, shape=list(args.shape),
                   table=table, records=records)
    atomic_write(args.out, lambda f: json.dump(payload, open(f, 'w'), indent=1, default=str),
                 overwrite=True)
    print(f'wrote {args.out}')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
