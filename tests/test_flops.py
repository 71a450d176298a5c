"""FLOPs: MACs per image at the full input, re-counted after pruning from the small forward."""
import pytest
import torch

import mmprune
import mmprune.flops as flops_mod
from mmprune.flops import FlopsCounter, _transfer, count_flops_params
from mmprune.tracing import make_batch, tensor_forward

from conftest import tiny

FULL = (320, 320)  # above the `trace_side` option, so re-counts use the small forward


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


def test_inference_forward_is_the_deployed_graph():
    """Benchmarks and tools time and count what a deployed model runs: a two-stage
    detector's RPN predicts for real, then its RoI head sees as many (fixed, spread
    over the FPN levels) proposals as test_cfg.rpn.max_per_img; the pruner's graph
    sees 4. The patches are undone after the call."""
    from mmprune.tracing import inference_forward, inference_proposals
    model, cfg = mmprune.build_model(tiny('mask_rcnn_r18_tiny'))
    model.eval()
    batch = make_batch(model, cfg, (128, 128))
    num = model.rpn_head.test_cfg['max_per_img']
    calls = []
    host = model.rpn_head.predict
    model.rpn_head.predict = lambda *a, **k: calls.append(1) or host(*a, **k)
    with torch.no_grad():
        boxes, scores, masks = inference_forward(model, batch)
    assert calls == [1]  # the real RPN (decoding, NMS) ran and its time counts
    assert boxes.shape[0] == scores.shape[0] == num and masks.shape[0] == min(num, 100)
    assert model.rpn_head.predict.__name__ == '<lambda>'  # ours, put back as it was
    del model.rpn_head.predict
    assert count_flops_params(model, batch)[0] == \
        count_flops_params(model, batch, inference_forward)[0] > \
        count_flops_params(model, batch, tensor_forward)[0]  # 1000 RoIs against 4
    with flops_mod.recording(model) as real, torch.no_grad():  # RoI align really run
        inference_forward(model, batch)
    assert flops_mod.flops_of(model, real) == count_flops_params(model, batch)[0]
    assert not any('forward' in vars(m) for m in model.modules())  # zeros stand-ins gone
    samples = make_batch(model, cfg, (512, 512))['data_samples']  # boxes up to 512 pixels
    first = inference_proposals(samples, num)[0].bboxes
    assert torch.equal(first, inference_proposals(samples, num)[0].bboxes)
    assert first.min() >= 0 and first[:, 2:].max() <= 512
    from mmdet.structures.bbox import bbox2roi
    levels = model.roi_head.bbox_roi_extractor.map_roi_levels(bbox2roi([first]), 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}  # every FPN level gets RoIs


def test_inference_forward_leaves_out_auxiliary_heads():
    from mmprune.tracing import inference_forward
    model, cfg = mmprune.build_model(tiny('pspnet_r18_tiny'))
    model.eval()
    assert model.with_auxiliary_head
    batch = make_batch(model, cfg, (128, 128))
    with torch.no_grad():
        out = inference_forward(model, batch)
        host = model(batch['inputs'], batch['data_samples'], mode='tensor')
        assert len(out) == 1 and torch.equal(out[0], host)
        assert len(tensor_forward(model, batch)) == 2  # the pruner's graph: both heads
    assert count_flops_params(model, batch)[0] == \
        count_flops_params(model, batch, inference_forward)[0] < \
        count_flops_params(model, batch, tensor_forward)[0]


def test_target_flops_aims_at_the_inference_forward():
    """A two-stage detector's target is met on what it runs at test time (RoI head on
    1000 proposals); the re-count from the small graph equals a full count."""
    from mmprune.tracing import inference_forward
    model, cfg = mmprune.build_model(tiny('faster_rcnn_r18_tiny'))
    batch = make_batch(model.eval(), cfg, FULL)
    res = mmprune.prune(model, cfg=cfg, input_shape=FULL, target_flops=0.6)
    assert res.flops[1] == count_flops_params(model.eval(), batch, inference_forward)[0]
    assert abs(res.flops_ratio - 0.6) < 0.05
    assert res.flops_forward == 'inference_forward'


def test_flops_fall_back_to_the_traced_graph_when_tensor_mode_fails(monkeypatch):
    def broken(model, batch):
        raise RuntimeError('host tensor mode is broken here')

    said = []
    monkeypatch.setattr(flops_mod, 'inference_forward', broken)
    monkeypatch.setattr(flops_mod, '_TENSOR_MODE_FAILS', set())
    monkeypatch.setattr(flops_mod, 'print_log', lambda msg, **kw: said.append(msg))
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    batch = make_batch(model.eval(), cfg, (128, 128))
    flops = count_flops_params(model, batch)[0]
    assert flops == count_flops_params(model, batch, tensor_forward)[0]
    count_flops_params(model, batch)
    assert len(said) == 1 and 'host tensor mode is broken here' in said[0]  # warned once
    assert FlopsCounter(model, batch).forward is tensor_forward
    res = mmprune.prune(model, cfg=cfg, pruning_ratio=0.3, input_shape=(128, 128))
    assert res.flops_forward == 'tensor_forward'  # the result says what was counted
    assert res.flops[1] == count_flops_params(model, batch, tensor_forward)[0]
    monkeypatch.undo()  # a model of the same class whose tensor mode runs is counted on it
    assert FlopsCounter(model, batch).forward.__name__ == 'inference_forward'
