"""prune() on small host models: identity, shrinking, modes, targets, bad input."""
import copy

import pytest
import torch
import torch_pruning as tp

import mmprune
from mmprune.tracing import make_batch
from mmprune.structure import snapshot

from conftest import state_equal, tensor_outputs, tiny

SHAPE = (96, 128)


def build(name):
    torch.manual_seed(0)  # the same weights whichever tests ran before
    model, cfg = mmprune.build_model(tiny(name))
    return model, cfg


@pytest.fixture(scope='module')
def retina():
    return build('retinanet_r18_tiny')


def fresh(pair):
    model, cfg = pair
    return copy.deepcopy(model), cfg


def test_ratio_zero_is_identity(retina):
    model, cfg = fresh(retina)
    batch = make_batch(model, cfg, SHAPE)
    before = tensor_outputs(model, batch)
    sd = copy.deepcopy(model.state_dict())
    result = mmprune.prune(model, pruning_ratio=0.0, cfg=cfg, input_shape=SHAPE)
    assert result.structure['layers'] == {} and result.structure['shapes'] == {}
    assert state_equal(sd, model.state_dict())
    after = tensor_outputs(model, batch)
    assert len(before) == len(after)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize('name', ['retinanet_r18_tiny', 'faster_rcnn_r18_tiny',
                                  'mask_rcnn_r18_tiny', 'pspnet_r18_tiny'])
def test_half_ratio_shrinks_and_keeps_outputs(name):
    model, cfg = build(name)
    batch = make_batch(model, cfg, SHAPE)
    dense_out = tensor_outputs(model, batch)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    model.train()
    modes = {n: m.training for n, m in model.named_modules()}
    result = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    assert result.params[1] < 0.6 * result.params[0]
    assert result.flops[1] < 0.6 * result.flops[0]
    assert result.output_layers, 'output layers must be found from the graph'
    # train/eval state and frozen layers are as before
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    # the backbone lost channels
    assert any(k.startswith('backbone.') for k in result.structure['layers'])
    pruned_out = tensor_outputs(model, batch)
    assert [o.shape for o in pruned_out] == [o.shape for o in dense_out]
    # loss + backward
    model.train()
    train_batch = make_batch(model, cfg, SHAPE, batch_size=2, training=True, seed=3)
    losses = model(train_batch['inputs'], train_batch['data_samples'], mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # predict
    model.eval()
    with torch.no_grad():
        preds = model(batch['inputs'], batch['data_samples'], mode='predict')
    assert len(preds) == 1
    if 'pred_instances' in preds[0]:
        labels = preds[0].pred_instances.labels
        assert labels.numel() == 0 or int(labels.max()) < 3
    else:
        seg = preds[0].pred_sem_seg.data
        assert seg.shape[-2:] == SHAPE and int(seg.max()) < 11


def test_output_layers_are_found_from_the_graph(retina):
    model, cfg = fresh(retina)
    result = mmprune.prune(model, pruning_ratio=0.3, cfg=cfg, input_shape=SHAPE)
    assert set(result.output_layers) == {'bbox_head.retina_cls', 'bbox_head.retina_reg'}
    assert model.bbox_head.retina_cls.out_channels == 9 * 3


def test_target_flops_is_met(retina):
    model, cfg = fresh(retina)
    result = mmprune.prune(model, target_flops=0.5, cfg=cfg, input_shape=SHAPE)
    assert abs(result.flops_ratio - 0.5) <= 0.02 * 0.5, result.flops_ratio


def test_unreachable_target_flops_is_an_error_and_leaves_the_model(retina):
    model, cfg = fresh(retina)
    sd = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match='unreachable'):
        mmprune.prune(model, target_flops=0.05, max_pruning_ratio=0.2, cfg=cfg,
                      input_shape=SHAPE)
    assert state_equal(sd, model.state_dict())


@pytest.mark.parametrize('name', ['retinanet_r18_tiny', 'pspnet_r18_tiny'])
def test_target_flops_one_is_identity(name):
    model, cfg = build(name)
    sd = copy.deepcopy(model.state_dict())
    result = mmprune.prune(model, target_flops=1.0, cfg=cfg, input_shape=SHAPE)
    assert result.structure['layers'] == {} and result.flops_ratio == 1.0
    assert state_equal(sd, model.state_dict())


def test_deep_target_below_the_rounding_floor_uses_exact_counts(retina):
    """Rounded counts keep at least round_to channels per layer; a target under that floor
    is reached with exact counts, said in the options, instead of being called unreachable."""
    model, cfg = fresh(retina)
    result = mmprune.prune(model, target_flops=0.05, cfg=cfg, input_shape=SHAPE)
    assert abs(result.flops_ratio - 0.05) <= 0.02 * 0.05, result.flops_ratio
    assert result.options['round_to'] is None


def test_per_layer_ratios_and_ignored_layers(retina):
    model, cfg = fresh(retina)
    result = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE,
                           pruning_ratio_dict={'backbone.layer4*': 0.0},
                           ignored_layers=['neck.*'])
    layers = result.structure['layers']
    for conv in ('backbone.layer4.0.conv1', 'backbone.layer4.1.conv1'):
        assert 'out_channels' not in layers.get(conv, {}), layers[conv]
    assert not any(k.startswith('neck.') and 'out_channels' in v for k, v in layers.items())
    assert any(k.startswith('backbone.layer1') for k in layers)


@pytest.mark.parametrize('importance', ['l1', 'group_l2', 'bn_scale', 'lamp', 'fpgm',
                                        'random', 'taylor', 'group_hessian'])
def test_every_criterion_prunes(retina, importance):
    model, cfg = fresh(retina)
    result = mmprune.prune(model, pruning_ratio=0.3, importance=importance, cfg=cfg,
                           input_shape=SHAPE, num_batches=1)
    assert result.params[1] < result.params[0]
    assert all(p.grad is None for p in model.parameters())


def test_iterative_and_global(retina):
    model, cfg = fresh(retina)
    result = mmprune.prune(model, pruning_ratio=0.4, global_pruning=True,
                           iterative_steps=2, round_to=4, cfg=cfg, input_shape=SHAPE)
    assert result.params[1] < result.params[0]
    for name, attrs in result.structure['layers'].items():
        if 'out_channels' in attrs and name.startswith('backbone.layer'):
            assert attrs['out_channels'] % 4 == 0, (name, attrs)


def test_round_channels_nearest_multiple_per_group():
    from mmprune.counts import ChannelCounts
    _round_channels = ChannelCounts(fast=False).pruned  # the nearest multiple (next test: fast)
    assert _round_channels(30, 64, 8) == 32  # kept 34 -> 32
    assert _round_channels(27, 64, 8) == 24  # kept 37 -> 40 (nearest, not down)
    assert _round_channels(27, 64, 8, down=True) == 32  # global ranking: down
    assert _round_channels(62, 64, 8) == 56  # never below one multiple
    assert _round_channels(5, 12, 8) == 5  # narrower than two multiples: exact
    assert _round_channels(1, 102, 8) == 0  # 101 -> 104 is more than there is: prune none
    # 4 GroupNorm groups of 16: counts are per group, the total kept stays a multiple of 8
    n = _round_channels(3, 64, 8, groups=4)
    assert n == 2 and (16 - n) * 4 % 8 == 0
    # 16 groups of 4: any per-group count keeps a multiple of 8 in all
    assert _round_channels(1, 64, 8, groups=16) == 1


def test_round_channels_prefers_fast_counts():
    from mmprune.counts import ChannelCounts, slow_count as _slow_count
    counts = ChannelCounts()
    assert [c for c in range(8, 513, 8) if _slow_count(c)] == [  # 7, 11, 13, ... 31 blocks
        104, 112, 168, 176, 200, 208, 264, 272, 296, 304, 360, 368, 456, 464, 488, 496]

    def kept(size, want, **kwargs):
        return size - counts.pruned(size - want, size, 8, **kwargs)

    # layers of BLOCKS_FROM (128) channels and more keep whole 16-channel blocks
    assert kept(512, 360) == 384  # 360 = 22.5 blocks; 23 is prime; 384 = 24 blocks, 6 x 64
    assert kept(256, 133) == 128  # not 136 or 144
    assert kept(256, 184) == 192
    assert kept(256, 170) == 160  # 176 makes 11 blocks (prime)
    assert kept(64, 43) == 40  # narrower than FAST_COUNTS_FROM: the nearest multiple (not 48)
    assert kept(2048, 1448) == 1472  # 23 x 64
    assert kept(64, 48) == 48 and kept(32, 24) == 24  # 1/8 of a narrow count: no other choice
    assert kept(256, 184, down=True) == 176  # global ranking: never above the count asked for
    counts = ChannelCounts(blocks_from=None)  # multiples of 8 everywhere
    assert kept(512, 360) == 352  # 23 blocks of 16 -> 22: the nearest multiple of 32
    assert kept(2048, 1448) == 1440
    assert kept(256, 184, down=True) == 184
    # GroupNorm, 16 groups of 16, 11 asked for per group: the total decides (11 x 16 makes
    # 11 blocks; 12 x 16 = 192 is a multiple of 4 per group)
    assert counts.pruned(5, 256, 8, groups=16) == 4
    counts = ChannelCounts(fast=False, blocks_from=None)
    assert kept(512, 360) == 360 and kept(256, 133) == 136 and kept(256, 184) == 184


def test_unmet_flops_target_reports_the_flops_left(monkeypatch):
    """FLOPs that jump over the target: the warning gives FLOPs a pruned model had,
    not the search bracket's bound (it used to print 100.0 %)."""
    import mmprune.search as search
    logged = []
    monkeypatch.setattr(search, 'print_log', lambda msg, **kwargs: logged.append(msg))

    def run(ratio, refine=False, exact=False):  # 60 % at small ratios, else 30 %: never 50
        return 600 if ratio < 0.2 and not refine else 300

    search.search_flops(run, lambda: None, torch.nn.Linear(1, 1), 1000, 0.5, 1.0)
    out = '\n'.join(logged)
    assert 'target_flops=0.5 not met' in out
    assert '60.0% of the FLOPs before' in out or '30.0% of the FLOPs before' in out, out


def test_default_round_to_keeps_multiples_of_8(retina):
    from mmprune.options import DEFAULT_ROUND_TO
    assert DEFAULT_ROUND_TO == 8
    widths = {}
    for round_to in (DEFAULT_ROUND_TO, None):
        model, cfg = fresh(retina)
        kwargs = {} if round_to else dict(round_to=None)
        result = mmprune.prune(model, pruning_ratio=0.3, cfg=cfg, input_shape=SHAPE, **kwargs)
        widths[round_to] = {n: m.out_channels for n, m in model.named_modules()
                            if isinstance(m, torch.nn.Conv2d) and n not in result.output_layers}
    dense = {n: m.out_channels for n, m in retina[0].named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    wide = [n for n in widths[8] if dense[n] >= 16]
    assert wide and all(widths[8][n] % 8 == 0 for n in wide), widths[8]
    assert any(widths[None][n] % 8 for n in wide)  # exact counts differ: the test can fail


@pytest.mark.parametrize('kwargs, match', [
    (dict(pruning_ratio=1.0), 'pruning_ratio'),
    (dict(pruning_ratio=-0.1), 'pruning_ratio'),
    (dict(pruning_ratio='half'), 'pruning_ratio'),
    (dict(importance='nope'), "Unknown importance 'nope'"),
    (dict(importance=dict(type='l2', bogus=1)), 'Bad arguments'),
    (dict(ignored_layers=['backbone.nope']), "'backbone.nope' matches no layer"),
    (dict(pruning_ratio_dict={'nope.*': 0.2}), "'nope.\\*' matches no layer"),
    (dict(pruning_ratio_dict={'neck.*': 1.5}), 'pruning_ratio_dict'),
    (dict(pruning_ratio_dict={'bbox_head.retina_cls': 0.5}), 'names only layers that are kept'),
    (dict(pruning_ratio_dict={'backbone.relu': 0.5}), 'names no prunable layer'),
    (dict(target_flops=0.0), 'target_flops'),
    (dict(iterative_steps=0), 'iterative_steps'),
    (dict(round_to=0), 'round_to'),
])
def test_bad_input_is_one_clear_error_and_model_unchanged(retina, kwargs, match):
    model, cfg = fresh(retina)
    sd = copy.deepcopy(model.state_dict())
    shape = snapshot(model)
    with pytest.raises((ValueError, KeyError)) as info:
        mmprune.prune(model, cfg=cfg, input_shape=SHAPE, **kwargs)
    assert info.match(match)
    assert state_equal(sd, model.state_dict())
    assert snapshot(model) == shape


def test_failure_midway_restores_the_model_and_names_the_layer(retina, monkeypatch):
    model, cfg = fresh(retina)
    sd = copy.deepcopy(model.state_dict())
    shape = snapshot(model)
    original = tp.dependency.Group.prune
    calls = []

    def prune_then_fail(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise IndexError('simulated failure after 3 groups')
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tp.dependency.Group, 'prune', prune_then_fail)
    with pytest.raises(RuntimeError, match=r"could not prune the channels of layer '[\w.]+'"):
        mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    assert snapshot(model) == shape
    assert state_equal(sd, model.state_dict())


def test_criterion_failing_on_a_group_names_the_layer(retina, monkeypatch):
    """torch-pruning's score reduction can fail on a group (seen: bn_scale on RTMDet's
    channel attention, index out of bounds); the error names the layer, model unchanged."""
    model, cfg = fresh(retina)
    sd = copy.deepcopy(model.state_dict())
    shape = snapshot(model)
    original = tp.importance.GroupMagnitudeImportance.__call__
    calls = []

    def score_then_fail(self, group, *args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise IndexError('index 48 is out of bounds for dimension 0 with size 48')
        return original(self, group, *args, **kwargs)

    monkeypatch.setattr(tp.importance.GroupMagnitudeImportance, '__call__', score_then_fail)
    with pytest.raises(RuntimeError, match=r"importance 'group_l2' failed on the channels of layer "
                                           r"'[\w.]+'.*add '[\w.]+' to ignored_layers"):
        mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    assert snapshot(model) == shape
    assert state_equal(sd, model.state_dict())


def test_pruned_model_failing_its_forward_is_a_named_error(retina, monkeypatch):
    """Seen by the fuzzer: FCOS pruned until its GroupNorm held one channel per group
    could not run at a 1x1 level. The forward after pruning fails -> one error, restored."""
    import mmprune.pruner as pruner
    model, cfg = fresh(retina)
    sd = copy.deepcopy(model.state_dict())
    shape = snapshot(model)
    real = pruner._prune_steps

    def prune_then_break(model, *args, **kwargs):
        real(model, *args, **kwargs)

        def fail(module, inputs):
            raise ValueError('Expected more than 1 value per channel when training')
        model.backbone.conv1.register_forward_pre_hook(fail)

    monkeypatch.setattr(pruner, '_prune_steps', prune_then_break)
    with pytest.raises(RuntimeError, match=r'the pruned model fails its forward at 96x128 '
                                           r'\(ValueError: Expected more than 1 value'):
        mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    assert snapshot(model) == shape
    assert state_equal(sd, model.state_dict())


def _with_train_data(cfg, root, n):
    from conftest import CLASSES, make_coco
    make_coco(root, n=n)
    cfg = copy.deepcopy(cfg)
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.update(
        data_root=root + '/', ann_file='ann.json', data_prefix=dict(img='images/'),
        metainfo=dict(classes=CLASSES), filter_cfg=dict(filter_empty_gt=False))
    return cfg


def test_gradient_criteria_read_the_config_train_dataloader(retina, tmp_path):
    from mmprune.loss import train_batches as _train_batches
    model, cfg = fresh(retina)
    cfg = _with_train_data(cfg, str(tmp_path), n=4)
    batches = _train_batches(cfg, 2)
    assert len(batches) == 2 and len(batches[0]['inputs']) == 2
    assert batches[0]['data_samples'][0].img_path.endswith('.png')
    result = mmprune.prune(model, pruning_ratio=0.3, importance='taylor', cfg=cfg,
                           input_shape=SHAPE)
    assert result.params[1] < result.params[0]


def test_empty_train_dataloader_is_a_clear_error(retina, tmp_path):
    model, cfg = fresh(retina)
    cfg = _with_train_data(cfg, str(tmp_path), n=0)
    sd = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="needs data, but the config's train_dataloader"):
        mmprune.prune(model, pruning_ratio=0.3, importance='taylor', cfg=cfg, input_shape=SHAPE)
    assert state_equal(sd, model.state_dict())


@pytest.mark.parametrize('error, says', [
    (RuntimeError('expected input to have 32 channels'), 'keep the layers feeding it'),
    # an op with no kernel here (mmcv's focal loss on a GPU without mmcv's compiled ops)
    (NotImplementedError('sigmoid_focal_loss_forward'), 'the unpruned model fails the same'),
])
def test_a_pruned_model_that_fails_its_loss_is_restored(retina, monkeypatch, error, says):
    model, cfg = fresh(retina)
    sd = copy.deepcopy(model.state_dict())
    shape = snapshot(model)

    def broken_loss(*args, **kwargs):
        raise error

    monkeypatch.setattr(model.bbox_head, 'loss', broken_loss)
    with pytest.raises(RuntimeError, match=f'fails in mode=loss.*{says}'):
        mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    assert snapshot(model) == shape
    assert state_equal(sd, model.state_dict())


@pytest.mark.parametrize('name', ['retinanet_r18_tiny', 'mask_rcnn_r18_tiny'])
def test_tracing_at_a_smaller_size_prunes_the_same_channels(name, monkeypatch):
    """The graph is traced at the trace_side option (faster); structure and FLOPs at
    input_shape are those of tracing at the full size."""
    import mmprune.pruner as pruner
    import mmprune.tracing as graph
    dense, cfg = build(name)
    traced = []
    real = graph.find_output_layers

    def spy(model, batch, *args, **kwargs):
        traced.append(tuple(batch['inputs'].shape[-2:]))
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(pruner, 'find_output_layers', spy)
    results = {}
    for side in (None, 64):
        model = copy.deepcopy(dense)
        results[side] = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE,
                                      round_to=4, trace_side=side)
    assert traced == [SHAPE, (64, 96)]
    assert results[64].structure == results[None].structure
    assert results[64].flops == results[None].flops
    assert results[64].output_layers == results[None].output_layers


def _training_output_head():
    from mmdet.models.dense_heads import RetinaHead
    from mmdet.registry import MODELS

    @MODELS.register_module(force=True)
    class TrainingOutputHead(RetinaHead):
        """As RepPoints' head: one more output in training mode, which its loss takes."""

        def forward(self, x):
            cls, reg = super().forward(x)
            return (cls, reg, [r * 0 for r in reg]) if self.training else (cls, reg)

        def loss_by_feat(self, cls_scores, bbox_preds, extra, batch_gt_instances,
                         batch_img_metas, batch_gt_instances_ignore=None):
            assert len(extra) == len(bbox_preds) and isinstance(extra[0], torch.Tensor)
            return super().loss_by_feat(cls_scores, bbox_preds, batch_gt_instances,
                                        batch_img_metas, batch_gt_instances_ignore)
    return 'TrainingOutputHead'


@pytest.mark.parametrize('importance', ['taylor', 'group_taylor', 'group_hessian'])
def test_gradient_criteria_take_the_loss_in_training_mode(importance):
    """A head whose forward depends on self.training gets the loss inputs it expects;
    batch norms keep their running statistics and every module its mode."""
    from mmengine.config import Config
    cfg = Config.fromfile(tiny('retinanet_r18_tiny'))
    cfg.model.bbox_head.type = _training_output_head()
    model, cfg = mmprune.build_model(cfg)
    model.train()
    model.backbone.layer1.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    with torch.no_grad():
        model.backbone.bn1.running_mean.copy_(torch.randn(model.backbone.bn1.num_features))
    stats = model.backbone.bn1.running_mean.clone()
    first = mmprune.prune(copy.deepcopy(model), pruning_ratio=0.5, importance=importance,
                          cfg=cfg, input_shape=SHAPE)
    result = mmprune.prune(model, pruning_ratio=0.5, importance=importance, cfg=cfg,
                           input_shape=SHAPE)
    assert result.structure == first.structure  # deterministic
    assert {n: m.training for n, m in model.named_modules()} == modes
    kept = model.backbone.bn1.running_mean
    assert kept.numel() < stats.numel()  # pruned, and the kept statistics did not move
    assert all((stats == v).any() for v in kept)


def test_loss_mode_sets_norms_to_their_running_statistics(retina):
    from mmprune.loss import loss_mode
    model, _ = fresh(retina)
    model.eval()
    with loss_mode(model):
        assert model.training and model.bbox_head.training
        assert not model.backbone.bn1.training
        first = torch.rand(3)
    with loss_mode(model):
        assert torch.equal(torch.rand(3), first)  # a fixed seed for dropout and drop-path
    assert not any(m.training for m in model.modules())


def test_every_option_is_checked_once_and_recorded(retina):
    """PruneOptions checks the options before anything is built and the result records
    every one, the switches that were module constants included."""
    from mmprune.options import PruneOptions
    with pytest.raises(TypeError, match=r"unknown pruning option\(s\) \['trace_size'\]"):
        mmprune.prune(retina[0], 0.3, cfg=retina[1], trace_size=128)
    for bad in (dict(fast_counts='yes'), dict(blocks_from=0), dict(trace_side=-1),
                dict(num_batches=0), dict(seed=-1), dict(iterative_steps=True)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PruneOptions(**bad)
    model, cfg = fresh(retina)
    result = mmprune.prune(model, 0.3, cfg=cfg, input_shape=SHAPE, fast_counts=False,
                           blocks_from=None, trace_side=None)
    assert set(result.options) >= set(PruneOptions.names())
    assert (result.options['fast_counts'], result.options['blocks_from'],
            result.options['trace_side']) == (False, None, None)
    assert result.options['input_shape'] == list(SHAPE)
