"""The MobileNetV2 converter: torchvision's ImageNet weights in mmdet's and mmseg's backbones."""
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
WEIGHTS = osp.join(ROOT, '..', 'shared', 'data', 'weights', 'mobilenet_v2-b0353104.pth')

from mmprune.cli import convert_mobilenetv2 as conv  # noqa: E402


def _torchvision(state):
    import torchvision
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(state)
    return net.eval()


def _check(style, state, tmp_path):
    if style == 'mmdet':
        from mmdet.models.backbones import MobileNetV2
        backbone = MobileNetV2(out_indices=(2, 4, 7))
        ends = (6, 13, 18)          # torchvision features index where each output ends
    else:
        from mmseg.models.backbones import MobileNetV2
        backbone = MobileNetV2(out_indices=(1, 2, 4, 6))
        ends = (3, 6, 13, 17)
    dst = str(tmp_path / f'{style}.pth')
    conv.main([WEIGHTS if state is None else state, dst, '--style', style])
    converted = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    backbone.load_state_dict(converted, strict=True)  # every key, no extra
    backbone.eval()
    tv = _torchvision(torch.load(WEIGHTS, map_location='cpu', weights_only=True))
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        outs = backbone(x)
        for out, end in zip(outs, ends):
            ref = tv.features[:end + 1](x)
            assert out.shape == ref.shape
            assert torch.allclose(out, ref, atol=1e-5), (style, end, (out - ref).abs().max())


@pytest.mark.skipif(not osp.exists(WEIGHTS), reason='../shared/data/weights/mobilenet_v2-b0353104.pth '
                    'absent (torchvision MobileNetV2 ImageNet weights)')
@pytest.mark.parametrize('style', ['mmdet', 'mmseg'])
def test_converted_backbone_matches_torchvision(style, tmp_path):
    _check(style, None, tmp_path)


def test_converter_rejects_other_files(tmp_path):
    import torchvision
    bad = torchvision.models.resnet18().state_dict()
    with pytest.raises(KeyError, match='not a torchvision MobileNetV2 key'):
        conv.convert(bad, 'mmdet')
    good = torchvision.models.mobilenet_v2().state_dict()
    del good['features.5.conv.1.0.weight']
    with pytest.raises(KeyError, match='layer3.1.depthwise_conv.conv'):
        conv.convert(good, 'mmdet')
    with pytest.raises(ValueError, match='style'):
        conv.convert(good, 'mmcls')
    dst = tmp_path / 'out.pth'
    dst.write_text('user file')
    src = tmp_path / 'tv.pth'
    torch.save(torchvision.models.mobilenet_v2().state_dict(), src)
    with pytest.raises(SystemExit, match='exists'):
        conv.main([str(src), str(dst)])
    assert dst.read_text() == 'user file'
