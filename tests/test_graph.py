"""Example inputs from the config, the widened tensor forward, output layers."""
import pytest
import torch

import mmprune
from mmprune.tracing import config_input_shape, find_output_layers, make_batch, tracing_state

from conftest import tiny

SHAPE = (96, 128)


def test_input_shape_comes_from_the_test_pipeline():
    cfg = mmprune.apis.load_config(tiny('retinanet_r18_tiny'))
    assert config_input_shape(cfg) == (800, 1333)  # Resize scale=(1333, 800), keep_ratio
    model, cfg = mmprune.build_model(cfg)
    batch = make_batch(model, cfg)
    h, w = batch['inputs'].shape[-2:]
    assert h % 32 == 0 and w % 32 == 0 and h >= 800  # pad_size_divisor=32 applied


def test_batch_is_normalised_by_the_data_preprocessor():
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    batch = make_batch(model, cfg, SHAPE)
    assert batch['inputs'].shape == (1, 3, 96, 128)
    assert batch['inputs'].mean().abs() < 3  # normalised, not 0..255
    assert batch['data_samples'][0].gt_instances.bboxes.shape[0] > 0


@pytest.mark.parametrize('name, expected', [
    ('faster_rcnn_r18_tiny', {'rpn_head.rpn_cls', 'rpn_head.rpn_reg',
                              'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg'}),
    ('mask_rcnn_r18_tiny', {'rpn_head.rpn_cls', 'rpn_head.rpn_reg', 'roi_head.bbox_head.fc_cls',
                            'roi_head.bbox_head.fc_reg', 'roi_head.mask_head.conv_logits'}),
    ('pspnet_r18_tiny', {'decode_head.conv_seg', 'auxiliary_head.conv_seg'}),
])
def test_rpn_roi_and_auxiliary_heads_are_traced(name, expected):
    model, cfg = mmprune.build_model(tiny(name))
    batch = make_batch(model, cfg, SHAPE)
    with tracing_state(model):
        names, outputs = find_output_layers(model, batch)
    assert set(names) >= expected, names
    assert all(o.grad_fn is not None for o in outputs)


def test_tracing_restores_modes_and_frozen_layers():
    model, _ = mmprune.build_model(tiny('retinanet_r18_tiny'))
    model.train()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen, 'frozen_stages=1 must freeze the stem'
    modes = [m.training for m in model.modules()]
    with tracing_state(model):
        assert all(p.requires_grad for p in model.parameters())
        assert not any(m.training for m in model.modules())
        assert torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == modes
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == frozen


@pytest.mark.parametrize('name, rule, lost, kept', [
    ('faster_rcnn_r18_tiny', 'rpn_outputs', set(), {'rpn_head.rpn_conv', 'neck.fpn_convs.3.conv'}),
    ('pspnet_r18_tiny', 'auxiliary_heads', {'auxiliary_head.conv_seg'}, set()),
])
def test_forward_rules_trace_what_the_host_tensor_mode_leaves_out(name, rule, lost, kept):
    """Without the rule the host's tensor mode does not trace these heads' graph: the RPN
    predicts without gradients, so the layers feeding it are kept whole; the auxiliary
    head runs only in the loss, so it is not traced at all (its output layer is not
    found, and its input channels would not follow the backbone's)."""
    import functools

    from mmprune.tracing import TraceContext, tensor_forward
    model, cfg = mmprune.build_model(tiny(name))
    batch = make_batch(model, cfg, SHAPE)
    with tracing_state(model):
        names, _ = find_output_layers(model, batch)
        without, _ = find_output_layers(model, batch, functools.partial(
            tensor_forward, context=TraceContext(disabled=frozenset({rule}))))
    assert set(names) >= lost and not set(without) & lost, (names, without)
    assert not set(names) & kept and set(without) >= kept, (names, without)
