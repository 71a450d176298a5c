"""DistillHook: the dense model teaches the pruned one in real mmengine runs."""
import math
import os

import pytest
import torch
from mmengine.hooks import Hook

from mmprune.distill import DistillHook, channel_wise_divergence

from conftest import ROOT, make_coco
from test_hooks import DET_CFG, SEG_CFG, _coco_opts, iter_runner


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    make_coco(str(root), n=6)
    return str(root)


def test_channel_wise_divergence_by_hand():
    # one image, one channel, two positions: teacher softmax (0.75, 0.25), student (0.5, 0.5)
    s = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 1, 1, 2)
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert channel_wise_divergence(s, t).item() == pytest.approx(want, rel=1e-6)
    assert channel_wise_divergence(t, t).item() == pytest.approx(0.0, abs=1e-7)
    # tau: logits divided by tau, the KL multiplied by tau ** 2
    assert channel_wise_divergence(s, 2 * t, tau=2.0).item() == pytest.approx(4 * want, rel=1e-6)
    # the mean over images and channels
    s2, t2 = torch.cat([s, s]), torch.cat([t, s])
    assert channel_wise_divergence(s2, t2).item() == pytest.approx(want / 2, rel=1e-6)


@pytest.mark.parametrize('kwargs, error', [
    (dict(loss='kl'), "loss must be one of \\['cwd', 'mse'\\], but got 'kl'"),
    (dict(loss_weight=0), 'loss_weight must be a positive number, but got 0'),
    (dict(tau=-1.0), 'tau must be a positive number, but got -1.0'),
    (dict(layers='bbox_head.retina_cls'), 'layers must be a non-empty list'),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(ValueError, match=error):
        DistillHook(**kwargs)


class _Record(Hook):
    def __init__(self):
        self.losses = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss_distill'].detach()))


def _runner(cfg_file, tmp_path, options, distill, **prune):
    runner = iter_runner(cfg_file, tmp_path, options,
                         [dict(type='mmprune.PruningHook', by_epoch=False, **prune),
                          dict(type='mmprune.DistillHook', **distill)], max_iters=4,
                         checkpoint_interval=4)
    record = _Record()
    runner.register_hook(record, priority='LOWEST')
    return runner, record


def test_detector_learns_from_its_dense_self_while_pruned(coco, tmp_path):
    opts = _coco_opts(coco)[1:]
    runner, record = _runner(DET_CFG, tmp_path, dict(o.split('=', 1) for o in opts),
                             dict(loss='cwd'), importance='l2', pruning_ratio=0.5, begin=1)
    model = runner.model
    dense_keys = set(model.state_dict())
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, DistillHook))
    assert sorted(hook.distilled) == ['bbox_head.retina_cls', 'bbox_head.retina_reg']
    # iteration 0, before the pruning step at 1: the student is its teacher (frozen BN
    # backbone, no norm in the head), so nothing to distil; after it the outputs differ
    assert len(record.losses) == 4 and record.losses[0] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(v) and v > 0 for v in record.losses[1:])
    # the teacher is gone after training and never entered the model or its checkpoints
    assert hook.teacher is None and set(model.state_dict()) == dense_keys
    ckpt = torch.load(tmp_path / 'iter_4.pth', weights_only=True)
    assert set(ckpt['state_dict']) == dense_keys
    assert model.neck.fpn_convs[0].conv.out_channels < 32
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_segmentor_distils_its_decode_head(tmp_path):
    from test_host_tools import _seg
    data = tmp_path / 'seg'
    _seg(str(data), n=4)
    opts = {f'{k}_dataloader.dataset.data_root': str(data) for k in ('train', 'val', 'test')}
    runner, record = _runner(SEG_CFG, tmp_path / 'wd', opts, dict(loss='mse', loss_weight=1.0),
                             importance='l2', target_flops=0.6, begin=0)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, DistillHook))
    # the auxiliary head runs in the loss forward only: not distilled by default
    assert hook.distilled == ['decode_head.conv_seg']
    assert len(record.losses) == 4 and all(math.isfinite(v) and v > 0 for v in record.losses)


def test_resumed_pruned_model_needs_a_teacher_checkpoint_and_names_bad_layers(coco, tmp_path):
    opts = _coco_opts(coco)[1:]
    runner, _ = _runner(DET_CFG, tmp_path, dict(o.split('=', 1) for o in opts),
                        dict(loss='cwd'), importance='l2', pruning_ratio=0.5, begin=0)
    runner.train()  # the model is pruned now, as at the start of a resumed run
    with pytest.raises(ValueError, match='give teacher_checkpoint='):
        DistillHook().before_train(runner)
    pruned_ckpt = os.path.join(tmp_path, 'iter_4.pth')
    with pytest.raises(ValueError, match='is a pruned checkpoint but the config builds the dense'):
        DistillHook(teacher_checkpoint=pruned_ckpt).before_train(runner)
    with pytest.raises(ValueError, match=r"no layer named \['bbox_head.no_such'\]"):
        DistillHook(layers=['bbox_head.no_such']).before_train(runner)


def test_two_stage_detector_distils_the_rpn_layers_it_is_given():
    """RoI-head outputs follow each model's proposals: not a default; the RPN's maps are."""
    import copy
    from types import SimpleNamespace

    import mmprune
    from mmprune.tracing import make_batch
    model, cfg = mmprune.build_model(os.path.join(ROOT, 'configs', 'tiny',
                                                  'faster_rcnn_r18_tiny.py'))
    runner = SimpleNamespace(cfg=cfg)
    with pytest.raises(ValueError, match="name the layers to compare with layers=, e.g. an "
                                         "RPN's \\['rpn_head.rpn_cls', 'rpn_head.rpn_reg'\\]"):
        DistillHook()._choose_layers(runner, model)
    hook = DistillHook(layers=['rpn_head.rpn_cls', 'rpn_head.rpn_reg'])
    hook.distilled = hook._choose_layers(runner, model)
    hook.teacher = copy.deepcopy(model).eval().requires_grad_(False)
    mmprune.prune(model, 0.5, cfg=cfg, importance='l2')
    hook._attach(model, hook.teacher)
    batch = make_batch(model, cfg, (96, 128), batch_size=2, training=True)
    model.train()
    hook._in_step = True
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    assert losses['loss_distill'].item() > 0 and losses['loss_distill'].requires_grad
    hook._in_step = False  # outside the runner's train step nothing is added
    assert 'loss_distill' not in model(batch['inputs'], batch['data_samples'], mode='loss')
