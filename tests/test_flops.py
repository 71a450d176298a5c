"""FLOPs: MACs per image at the full input, re-counted after pruning from the small forward."""
import pytest
import torch

import mmprune
import mmprune.flops as flops_mod
from mmprune.flops import FlopsCounter, _transfer, count_flops_params
from mmprune.graph import make_batch, tensor_forward

from conftest import tiny

FULL = (320, 320)  # above mmprune.pruner.TRACE_SIDE, so re-counts use the small forward


def _conv_macs(model, batch):
    total = [0]

    def hook(m, args, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += k * m.in_channels // m.groups * m.out_channels * out[0, 0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        tensor_forward(model, batch)
    for h in handles:
        h.remove()
    return total[0] // batch['inputs'].shape[0]


def test_count_is_macs_per_image():
    """torch-pruning's own count_ops_and_params divides by len() of the batch dict (2
    keys); ours is per image, and convolutions make nearly all of it."""
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    model.eval()
    one = make_batch(model, cfg, FULL)
    two = make_batch(model, cfg, FULL, batch_size=2)
    flops, params = count_flops_params(model, one)
    assert params == sum(p.numel() for p in model.parameters())
    assert count_flops_params(model, two)[0] == flops
    conv = _conv_macs(model, one)
    assert conv <= flops <= 1.1 * conv


@pytest.mark.parametrize('name', ['retinanet_r18_tiny', 'mask_rcnn_r18_tiny', 'pspnet_r18_tiny'])
def test_recount_needs_no_full_size_forward(monkeypatch, name):
    """After pruning, FLOPs at the full size come from the forward at the small size:
    the same number as a full-size forward, which is not run."""
    model, cfg = mmprune.build_model(tiny(name))
    monkeypatch.setenv('MMPRUNE_CHECK_FLOPS', '0')
    real = flops_mod.count_flops_params

    def refuse(*args):
        raise AssertionError('a full-size forward was run to re-count the FLOPs')
    monkeypatch.setattr(flops_mod, 'count_flops_params', refuse)
    result = mmprune.prune(model, cfg=cfg, input_shape=FULL, target_flops=0.5)
    monkeypatch.setattr(flops_mod, 'count_flops_params', real)
    model.eval()
    assert result.flops[1] == real(model, make_batch(model, cfg, FULL))[0]
    assert abs(result.flops_ratio - 0.5) <= 0.01 + 1e-9  # FLOPS_TOLERANCE of 0.5


def test_transfer_takes_channel_dims_and_refuses_mixed_ones():
    # conv output at 320 / 256 traced / 256 pruned: channels move, space stays
    assert _transfer((1, 64, 40, 40), (1, 64, 32, 32), (1, 24, 32, 32)) == (1, 24, 40, 40)
    assert _transfer(((1, 64, 40, 40), None), ((1, 64, 32, 32), None),
                     ((1, 24, 32, 32), None)) == ((1, 24, 40, 40), None)
    # a flatten of channels with space: the full-size width cannot be known
    with pytest.raises(ValueError):
        _transfer((1, 64 * 40 * 40), (1, 64 * 32 * 32), (1, 24 * 32 * 32))


def test_recount_runs_the_full_forward_when_shapes_do_not_transfer():
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    model.eval()
    batch, small = make_batch(model, cfg, FULL), make_batch(model, cfg, (256, 256))
    counter = FlopsCounter(model, batch, small)
    assert counter.count(model) == counter.dense and counter.full_forwards == 0
    name = next(iter(counter.small_dense))
    counter.small_dense[name] = counter.small_dense[name] * 2  # as if it ran twice
    assert counter.count(model) == counter.dense and counter.full_forwards == 1
