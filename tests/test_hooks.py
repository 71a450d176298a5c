"""PruningHook in real mmengine runs: host train.py, resume, DDP, EMA, optimizer state."""
import copy
import json
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook

import mmprune
from mmprune.hooks import PruningHook, compose
from mmprune.tracking import apply_slices, remap_optimizer, slice_copy, slices_by_name, track_slices

from conftest import ROOT, make_coco

DET_CFG = os.path.join(ROOT, 'configs', 'pruning', 'retinanet_r18_tiny_prune-hook.py')
SEG_CFG = os.path.join(ROOT, 'configs', 'pruning', 'pspnet_r18_tiny_prune-hook.py')
STEP = re.compile(r'\[mmprune\] step (\d+)/(\d+) .*FLOPs [\d.]+G \(([\d.]+)% of dense\); '
                  r'structure (\w+)')


def _host_train(codebase):
    import importlib
    pkg = importlib.import_module(codebase)
    return os.path.join(os.path.dirname(pkg.__file__), '.mim', 'tools', 'train.py')


def _run(cmd, cwd, timeout=900):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                         env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1'))
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    return log


def _coco_opts(data):
    return ['--cfg-options', f'data_root={data}/', f'train_dataloader.dataset.data_root={data}/',
            f'val_dataloader.dataset.data_root={data}/',
            f'test_dataloader.dataset.data_root={data}/',
            f'val_evaluator.ann_file={data}/ann.json', f'test_evaluator.ann_file={data}/ann.json']


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp('coco')
    make_coco(str(root), n=6)
    return str(root)


def test_progressive_hook_through_host_train_then_resume(coco, tmp_path):
    """mmdet's own tools/train.py: two pruning steps reach 50 % FLOPs (within 2 %); a run
    stopped after the first step and resumed ends with the same structure."""
    train = _host_train('mmdet')
    # one seed for every run: the same init and data order, so the resumed run's second step
    # sees the weights the uninterrupted run saw (its global-ranking refinement, used when
    # rounded channel counts miss the FLOPs target, depends on them)
    opts = _coco_opts(coco) + ['randomness.seed=0']
    full = _run([sys.executable, train, DET_CFG, '--work-dir', str(tmp_path / 'full'),
                 *opts], cwd=str(tmp_path))
    steps = STEP.findall(full)
    assert [s[:2] for s in steps] == [('1', '2'), ('2', '2')], full[-3000:]
    assert abs(float(steps[-1][2]) / 100 - 0.5) <= 0.02 * 0.5
    assert re.search(r'loss: \d+\.\d+', full.split('step 2/2')[-1])  # trained on after step 2

    # killed (SIGKILL) twice: inside the second pruning step (epoch 2 starts from epoch 1's
    # checkpoint), then, resumed, half-way through writing epoch 2's checkpoint (a torn
    # file); each resume starts from the last complete checkpoint and ends the same
    part = tmp_path / 'part'
    killed = tmp_path / 'killed.py'
    killed.write_text(f"_base_ = '{DET_CFG}'\ncustom_imports = dict(imports=['kill_hook'])\n"
                      "custom_hooks = [dict(type='mmprune.PruningHook', importance='l2', "
                      "target_flops=0.5, begin=0, end=2), dict(type='KillDuringPruning', epoch=1), "
                      "dict(type='KillDuringCheckpointWrite', epoch=2)]\n")

    def killed_run(*extra):
        proc = subprocess.run([sys.executable, train, str(killed), '--work-dir', str(part), *extra,
                               *opts], capture_output=True, text=True,
                              cwd=str(tmp_path), timeout=900,
                              env=dict(os.environ, OMP_NUM_THREADS='1',
                                       PYTHONPATH=f'{ROOT}:{ROOT}/tests'))
        assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr
    log = killed_run()
    assert 'step 1/2' in log and 'step 2/2' not in log
    assert (part / 'epoch_1.pth').exists() and not (part / 'epoch_2.pth').exists()
    log = killed_run('--resume')
    assert 'rebuilt from the checkpoint; steps done: [0]' in log and 'step 2/2' in log
    torn = (part / 'epoch_2.pth').stat().st_size
    assert open(part / 'last_checkpoint').read().strip().endswith('epoch_1.pth')
    resumed = _run([sys.executable, train, DET_CFG, '--work-dir', str(part), '--resume',
                    *opts], cwd=str(tmp_path))
    assert 'rebuilt from the checkpoint; steps done: [0]' in resumed
    assert STEP.findall(resumed)[-1][3] == steps[-1][3]  # same final structure hash
    assert (part / 'epoch_2.pth').stat().st_size > torn  # the torn file was rewritten whole
    ckpt = torch.load(part / 'epoch_3.pth', weights_only=True)  # loads under weights_only
    assert ckpt['meta']['mmprune']['hash'] == steps[-1][3]
    assert ckpt['meta']['mmprune']['done'] == [0, 1]

    # the run's pruned config + any of its checkpoints load with the host's API
    from mmdet.apis import init_detector
    pruned_cfg = part / 'retinanet_r18_tiny_prune-hook_pruned.py'
    model = init_detector(str(pruned_cfg), str(part / 'epoch_3.pth'), device='cpu')
    assert set(model.state_dict()) == set(ckpt['state_dict'])
    assert sum(p.numel() for p in model.parameters()) == ckpt['meta']['mmprune']['current']['params']


def test_iteration_hook_through_mmseg_train(tmp_path):
    from test_host_tools import _seg
    data = tmp_path / 'seg'
    _seg(str(data), n=4)
    log = _run([sys.executable, _host_train('mmseg'), SEG_CFG, '--work-dir', str(tmp_path / 'wd'),
                '--cfg-options', f'train_dataloader.dataset.data_root={data}',
                f'val_dataloader.dataset.data_root={data}',
                f'test_dataloader.dataset.data_root={data}'], cwd=str(tmp_path))
    steps = STEP.findall(log)
    assert [s[:2] for s in steps] == [('1', '3'), ('2', '3'), ('3', '3')], log[-3000:]
    ratios = [float(s[2]) / 100 for s in steps]
    # target_flops lands within 2 % of 0.5 (FLOPS_TOLERANCE); the log prints one decimal
    assert ratios[0] > ratios[1] > ratios[2] and abs(ratios[2] - 0.5) <= 0.01 + 5e-4
    assert 'mIoU' in log
    from mmseg.apis import init_model
    model = init_model(str(tmp_path / 'wd' / 'pspnet_r18_tiny_prune-hook_pruned.py'),
                       str(tmp_path / 'wd' / 'iter_8.pth'), device='cpu')
    assert model.decode_head.conv_seg.out_channels == 11


def test_two_ranks_prune_identically(coco, tmp_path):
    """torchrun with 2 CPU processes (gloo): rank 0 decides, both ranks verify equal shapes."""
    log = _run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
                '--master_port', '29541', os.path.join(ROOT, 'tools', 'prune_train.py'), DET_CFG,
                '--work-dir', str(tmp_path / 'ddp'), '--launcher', 'pytorch', *_coco_opts(coco)],
               cwd=str(tmp_path))
    assert log.count('the same on all 2 ranks') == 2, log[-3000:]
    summary = json.load(open(tmp_path / 'ddp' / 'prune_train_summary.json'))
    assert summary['steps_done'] == [0, 1] and abs(summary['flops_ratio'] - 0.5) <= 0.01 + 1e-9


class _CheckOptimizer(Hook):
    """After every iteration: the optimizer holds exactly the model's parameters, and
    each SGD momentum buffer has its parameter's shape."""

    def __init__(self):
        self.checked = 0
        self.params = []  # parameter count after each iteration

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        held = [p for g in runner.optim_wrapper.optimizer.param_groups for p in g['params']]
        assert {id(p) for p in held} == {id(p) for p in model.parameters()}
        for p in held:
            buf = runner.optim_wrapper.optimizer.state.get(p, {}).get('momentum_buffer')
            assert buf is None or buf.shape == p.shape
        assert all(torch.isfinite(v).all() for k, v in outputs.items() if 'loss' in k)
        self.params.append(sum(p.numel() for p in model.parameters()))
        self.checked += 1


def iter_runner(cfg_file, tmp_path, options: dict, hooks: list, max_iters: int,
                checkpoint_interval: int = 100):
    """An in-process Runner of ``cfg_file``: iteration-based, no LR schedule."""
    from mmengine.runner import Runner
    cfg = Config.fromfile(cfg_file)
    cfg.merge_from_dict(options)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=checkpoint_interval,
                                        by_epoch=False)
    cfg.custom_hooks = hooks
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f'run_{tmp_path.name}'
    return Runner.from_cfg(cfg)


def _runner(coco, tmp_path, **hook):
    runner = iter_runner(DET_CFG, tmp_path, dict(o.split('=', 1) for o in _coco_opts(coco)[1:]),
                         [dict(type='mmprune.PruningHook', by_epoch=False, **hook),
                          dict(type='EMAHook', momentum=0.5)], max_iters=6)
    check = _CheckOptimizer()
    runner.register_hook(check, priority='LOWEST')
    return runner, check


def test_optimizer_and_ema_follow_each_step(coco, tmp_path):
    runner, check = _runner(coco, tmp_path, pruning_ratio=0.5, begin=1, end=5, interval=2,
                            ramp='cubic', importance='taylor')
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model
    assert hook.done == [1, 3] and check.checked == 6
    model = runner.model
    assert {k: v.shape for k, v in ema.module.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    assert model.neck.fpn_convs[0].conv.out_channels < 32
    # the structure in the hook rebuilds the same shapes on a fresh dense model
    fresh, _ = mmprune.build_model(copy.deepcopy(runner.cfg))
    mmprune.apply_structure(fresh, hook.structure)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}


def test_one_shot_hook_prunes_once_at_its_iteration(coco, tmp_path):
    runner, check = _runner(coco, tmp_path, target_flops=0.6, begin=2)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
    assert hook.done == [2]
    dense = check.params[0]
    assert check.params[:2] == [dense, dense] and len(set(check.params[2:])) == 1
    assert check.params[2] < dense
    assert abs(hook.current['flops'] / hook.dense['flops'] - 0.6) <= 0.02 * 0.6


def test_flops_of_checkpoints_from_the_old_counter_are_recounted(coco, tmp_path):
    """Checkpoints saved before the FLOPs counter fix hold half the MACs and no counter
    name: loading one re-counts the model (ratio kept); a current one loads as saved."""
    runner, _ = _runner(coco, tmp_path / 'run', target_flops=0.6, begin=1)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, PruningHook))
    runner.save_checkpoint(str(tmp_path), 'new.pth')
    ckpt = torch.load(tmp_path / 'new.pth', weights_only=False)
    meta = ckpt['meta']['mmprune']
    assert meta['flops_counter'] == 'macs-per-image'
    assert meta['dense'] == hook.dense and meta['current'] == hook.current
    del meta['flops_counter']
    for key in ('dense', 'current'):
        meta[key]['flops'] //= 2
    torch.save(ckpt, tmp_path / 'old.pth')
    for name in ('old.pth', 'new.pth'):
        fresh, _ = _runner(coco, tmp_path / f'load_{name[:3]}', target_flops=0.6, begin=1)
        fresh._hooks = [h for h in fresh.hooks if type(h).__name__ != 'EMAHook']  # no run
        loaded = next(h for h in fresh.hooks if isinstance(h, PruningHook))
        fresh.load_checkpoint(str(tmp_path / name))
        assert loaded.current == hook.current
        assert loaded.dense['flops'] == pytest.approx(hook.dense['flops'], rel=1e-6)
        assert loaded.dense['params'] == hook.dense['params']


@pytest.mark.parametrize('mode', [dict(target_flops=0.5), dict(pruning_ratio=0.5)])
def test_per_layer_ratios_compose_over_the_steps(mode):
    """A pruning_ratio_dict entry is reached after the last step, not applied at each
    (with target_flops it was: three steps of 0.6 kept 6 % of the channels, not 40 %)."""
    hook = PruningHook(begin=0, end=3, pruning_ratio_dict={'backbone.layer1': 0.6}, **mode)
    hook.dense = hook.current = dict(flops=100, params=10)
    kept = 1.0
    for k in range(len(hook.points)):
        kept *= 1 - hook.step_kwargs(k)['pruning_ratio_dict']['backbone.layer1']
    assert len(hook.points) == 3 and kept == pytest.approx(0.4)


@pytest.mark.parametrize('ramp', ['linear', 'cubic'])
def test_schedule_ramps_reach_the_target_at_the_last_step(ramp):
    from mmprune.schedule import Schedule
    s = Schedule(begin=2, end=10, interval=2, ramp=ramp)
    assert s.points == [2, 4, 6, 8]
    shares = [s.fraction(k) for k in range(4)]
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0)
    assert shares[0] == pytest.approx(0.25 if ramp == 'linear' else 1 - 0.75 ** 3)
    assert s.goal(0.5, 3) == pytest.approx(0.5) and s.goal(0.5, 0) > 0.5
    kept = 1.0
    for k in range(4):  # step ratios of the channels left compose to the final ratio
        kept *= 1 - s.step_ratio(0.6, k)
    assert kept == pytest.approx(0.4)
    assert [s.count(10, k) for k in range(4)][-1] == 10


def test_schedule_refuses_steps_after_the_end_of_training():
    from mmengine.runner import IterBasedTrainLoop

    from mmprune.schedule import Schedule
    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)
    loop._max_iters = 300
    with pytest.raises(ValueError, match=r'iterations \[300\] fall after the end'):
        Schedule(0, 400, 100, by_epoch=False).check_loop(loop, done=[])
    Schedule(0, 300, 100, by_epoch=False).check_loop(loop, done=[])
    with pytest.raises(ValueError, match='by_epoch=False'):
        Schedule(0, 3, 1, by_epoch=True).check_loop(loop, done=[])


def test_state_follows_the_pruned_channels():
    """Adam moments and an EMA copy are sliced exactly like the parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.data.normal_()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    before = dict(model.named_parameters())
    moments = {n: optimizer.state[p]['exp_avg'].clone() for n, p in before.items()}
    ema_before = {k: v.clone() for k, v in ema.state_dict().items()}
    import torch_pruning as tp
    dg = tp.DependencyGraph().build_dependency(model, torch.randn(1, 3, 8, 8))
    with track_slices() as slices:
        dg.get_pruning_group(model[0], tp.prune_conv_out_channels, idxs=[1, 4, 6]).prune()
    plan = slices_by_name(model, slices)
    assert plan['0.weight'] == [(0, [0, 2, 3, 5, 7])] and plan['3.weight'] == [(1, [0, 2, 3, 5, 7])]
    counts = remap_optimizer(optimizer, before, model, plan)
    assert counts == dict(sliced=5, moved=0, reset=0, removed=0)  # 0.w, 0.b, 1.w, 1.b, 3.w
    for name, p in model.named_parameters():
        assert optimizer.state[p]['exp_avg'].shape == p.shape
        assert torch.equal(optimizer.state[p]['exp_avg'], apply_slices(moments[name], plan.get(name, [])))
    mmprune.apply_structure(ema, mmprune.structure.diff(
        mmprune.structure.snapshot(copy.deepcopy(ema)), model))
    slice_copy(ema, ema_before, model, plan)
    assert torch.equal(ema[1].running_mean, ema_before['1.running_mean'][[0, 2, 3, 5, 7]])
    assert torch.equal(ema[3].weight, ema_before['3.weight'][:, [0, 2, 3, 5, 7]])
    optimizer.step()  # still a working optimizer


def test_compose_structures():
    a = dict(version=1, layers={'x': dict(out_channels=8)}, shapes={'x.weight': [8, 3]})
    b = dict(version=1, layers={'x': dict(out_channels=4), 'y': dict(in_channels=4)},
             shapes={'x.weight': [4, 3]})
    assert compose(a, b) == dict(version=1, layers={'x': dict(out_channels=4),
                                                    'y': dict(in_channels=4)},
                                 shapes={'x.weight': [4, 3]})


@pytest.mark.parametrize('kwargs, error', [
    (dict(pruning_ratio=1.0), 'pruning_ratio'),
    (dict(pruning_ratio=-0.1), 'pruning_ratio'),
    (dict(target_flops=0.0), 'target_flops'),
    (dict(pruning_ratio=0.3, target_flops=0.5), 'exactly one'),
    (dict(pruning_ratio=0.3, importance='nope'), 'nope'),
    (dict(pruning_ratio=0.3, ramp='exp'), 'ramp'),
    (dict(pruning_ratio=0.3, begin=3, end=2), 'end'),
    (dict(pruning_ratio=0.3, lr=0.1), 'lr'),
    (dict(pruning_ratio=0.3, round_to=0), 'round_to'),
    (dict(pruning_ratio=0.3, max_pruning_ratio=0), 'max_pruning_ratio'),
    (dict(pruning_ratio=0.3, allocation='fastest'), 'allocation'),
    (dict(pruning_ratio=0.3, pruning_ratio_dict={'neck.*': 1.5}), 'pruning_ratio_dict'),
])
def test_bad_hook_arguments(kwargs, error):
    with pytest.raises((ValueError, TypeError, KeyError), match=error):
        PruningHook(**kwargs)


def test_wrapper_prunes_at_build_time_for_host_train_and_test(coco, tmp_path):
    """model=dict(type='mmprune.PrunedModel', pruning=..., checkpoint=dense): the host's
    train.py finetunes the pruned model and init_detector reloads the run's checkpoint."""
    dense, cfg = mmprune.build_model(DET_CFG)
    dense_ckpt = tmp_path / 'dense.pth'
    torch.save(dict(state_dict=dense.state_dict()), dense_ckpt)
    config = tmp_path / 'wrapped.py'
    config.write_text(
        f"_base_ = '{DET_CFG}'\ncustom_hooks = []\ntrain_cfg = dict(max_epochs=1, val_interval=1)\n"
        f"model = dict(type='mmprune.PrunedModel', architecture='mmdet.RetinaNet', "
        f"checkpoint='{dense_ckpt}', pruning=dict(pruning_ratio=0.5, input_shape=(96, 128)))\n")
    log = _run([sys.executable, _host_train('mmdet'), str(config), '--work-dir',
                str(tmp_path / 'wd'), *_coco_opts(coco)], cwd=str(tmp_path))
    assert 'PrunedModel built and pruned' in log and 'Epoch(train) [1][3/3]' in log
    from mmdet.apis import init_detector
    model = init_detector(str(config), str(tmp_path / 'wd' / 'epoch_1.pth'), device='cpu')
    ckpt = torch.load(tmp_path / 'wd' / 'epoch_1.pth', weights_only=True)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in ckpt['state_dict'].items()}
    assert model.neck.fpn_convs[0].conv.out_channels < dense.neck.fpn_convs[0].conv.out_channels
    with pytest.raises(ValueError, match='not both'):
        mmprune.build_pruned_model('mmdet.RetinaNet', structure={}, pruning={})


def test_a_failing_step_stops_the_run_with_its_reason(coco, tmp_path):
    # only the traced graph tells that this layer defines an output: known at the step
    runner, _ = _runner(coco, tmp_path, pruning_ratio=0.3, begin=1,
                        pruning_ratio_dict={'bbox_head.retina_cls': 0.5})
    with pytest.raises(ValueError, match="'bbox_head.retina_cls' names only layers that are "
                                         "kept"):
        runner.train()
    assert runner.iter == 1  # it trained up to the step


def test_load_from_a_dense_checkpoint_into_a_pruned_config_fails_before_training(coco,
                                                                                 tmp_path):
    from mmengine.runner import Runner
    cfg = Config.fromfile(DET_CFG)
    cfg.merge_from_dict(dict(o.split('=', 1) for o in _coco_opts(coco)[1:]))
    cfg.custom_hooks = []
    model, cfg = mmprune.build_model(cfg)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'dense.pth')
    result = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=(96, 128))
    pruned_cfg, _ = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path / 'p'))
    cfg = Config.fromfile(pruned_cfg)
    cfg.load_from = str(tmp_path / 'dense.pth')
    cfg.work_dir = str(tmp_path / 'wd')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r'dense\.pth does not fit the pruned RetinaNet.*'
                                         r'nothing was loaded'):
        runner.train()
    assert runner.iter == 0


def _epoch_runner(coco, tmp_path, hooks, train_cfg=None):
    from mmengine.runner import Runner
    cfg = Config.fromfile(DET_CFG)
    cfg.merge_from_dict(dict(o.split('=', 1) for o in _coco_opts(coco)[1:]))
    cfg.custom_hooks = [dict(type='mmprune.PruningHook', importance='l2', target_flops=0.5,
                             **h) for h in hooks]
    if train_cfg:
        cfg.train_cfg = train_cfg
    cfg.work_dir = str(tmp_path)
    cfg.experiment_name = f'run_{tmp_path.name}'
    return Runner.from_cfg(cfg)


@pytest.mark.parametrize('hooks, train_cfg, match', [
    ([dict(begin=5)], None, r'epochs \[5\] fall after the end of training \(max_epochs=3.*'
                            r'no pruning step would run'),
    ([dict(begin=0, end=6)], None, r'epochs \[3, 4, 5\] fall after.*3 of its 6 steps would '
                                   r'not run'),
    ([dict(begin=10, by_epoch=False)], dict(type='IterBasedTrainLoop', max_iters=6),
     r'iterations \[10\] fall after the end of training \(max_iterations=6'),
    ([dict(begin=0, end=4)], dict(type='IterBasedTrainLoop', max_iters=6),
     'counts iterations.*set by_epoch=False'),
    ([dict(begin=0), dict(begin=1)], None, '2 PruningHooks in one run'),
    ([dict(begin=2, ignored_layers=['no.such.layer'])], None,
     "ignored_layers entry 'no.such.layer' matches no layer"),
    ([dict(begin=2, pruning_ratio_dict={'neck.nope': 0.3})], None,
     "pruning_ratio_dict key 'neck.nope' matches no layer"),
])
def test_a_schedule_the_run_cannot_carry_out_fails_before_training(coco, tmp_path, hooks,
                                                                   train_cfg, match):
    runner = _epoch_runner(coco, tmp_path, hooks, train_cfg)
    with pytest.raises((ValueError, KeyError), match=match):
        runner.train()
    assert runner.iter == 0 and not any(f.endswith('.pth') for f in os.listdir(tmp_path))


def test_prune_train_ends_with_dense_vs_pruned_table(coco, tmp_path):
    """tools/prune_train.py from a dense checkpoint: finetunes (distilling the dense
    model, loaded from the checkpoint, into the pruned one), then evaluates the pruned
    best/last checkpoint and the dense one with tools/test.py's code, in one table."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    dense = MODELS.build(Config.fromfile(DET_CFG).model)
    torch.save(dict(state_dict=dense.state_dict(), meta={}), tmp_path / 'dense.pth')
    log = _run([sys.executable, os.path.join(ROOT, 'tools', 'prune_train.py'), DET_CFG,
                '--checkpoint', str(tmp_path / 'dense.pth'), '--work-dir', str(tmp_path / 'wd'),
                '--distill', 'cwd', '--distill-weight', '2', '--latency-runs', '2',
                *_coco_opts(coco), 'train_cfg.max_epochs=2', 'train_cfg.val_interval=2'],
               cwd=str(tmp_path))
    assert "distilling cwd (weight 2, tau 1) from the dense teacher on ['bbox_head." in log
    assert re.search(r'loss_distill: \d', log)
    summary = json.load(open(tmp_path / 'wd' / 'prune_train_summary.json'))
    pruned, base = summary['compare']
    assert (pruned['tag'], base['tag']) == ('pruned', 'dense')
    assert pruned['checkpoint'].endswith('epoch_2.pth') and base['checkpoint'].endswith('dense.pth')
    assert base['params'] == summary['dense']['params'] > pruned['params'] == summary['pruned']['params']
    assert abs(pruned['flops'] / base['flops'] - summary['flops_ratio']) < 1e-6
    assert 'coco/bbox_mAP' in pruned['metrics'] and 'coco/bbox_mAP' in base['metrics']
    assert 'pruned' in summary['table'] and 'dense' in summary['table']
    # benchmarks/runs_speed.py times the run's two models again from its summary
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    import runs_speed
    assert runs_speed.main([str(tmp_path / 'wd'), '--runs', '1', '--malloc', 'default',
                            '--out', str(tmp_path / 'speed.json')]) == 0
    row, = json.load(open(tmp_path / 'speed.json'))['records']
    assert row['speedup'] > 0 and row['flops_ratio'] == summary['flops_ratio']
    # --resume with --checkpoint resumes the run's own last checkpoint (mmengine alone would
    # resume from load_from, the dense weights); the teacher still comes from --checkpoint
    log = _run([sys.executable, os.path.join(ROOT, 'tools', 'prune_train.py'), DET_CFG,
                '--checkpoint', str(tmp_path / 'dense.pth'), '--work-dir', str(tmp_path / 'wd'),
                '--resume', '--distill', 'cwd', '--no-compare', *_coco_opts(coco),
                'train_cfg.max_epochs=3', 'train_cfg.val_interval=3'], cwd=str(tmp_path))
    assert re.search(r'resumed epoch: 2', log) and 'steps done: [0, 1]' in log, log[-3000:]
    assert re.search(r'Epoch\(train\) +\[3\]\[\d+/\d+\].*loss_distill: \d', log)
    resumed = json.load(open(tmp_path / 'wd' / 'prune_train_summary.json'))
    assert resumed['structure_hash'] == summary['structure_hash']


def test_blocks_removed_at_the_hook_steps_leave_optimizer_and_ema_and_resume(coco, tmp_path):
    """remove_blocks=2 over two steps: one block each; the optimizer drops their parameters
    (the check hook compares its parameters with the model's every iteration), the EMA copy
    loses the same blocks, and a run resumed after the first step ends the same."""
    from mmprune.depth import SkippedBlock
    opts = dict(o.split('=', 1) for o in _coco_opts(coco)[1:])
    hook = dict(type='mmprune.PruningHook', by_epoch=False, remove_blocks=2, begin=1, end=4,
                interval=2)
    runner = iter_runner(DET_CFG, tmp_path / 'full', opts,
                         [hook, dict(type='EMAHook', momentum=0.5)], max_iters=6,
                         checkpoint_interval=2)
    check = _CheckOptimizer()
    runner.register_hook(check, priority='LOWEST')
    runner.train()
    pruning = next(h for h in runner.hooks if isinstance(h, PruningHook))
    removed = sorted(pruning.structure['removed'])
    assert pruning.done == [1, 3] and len(removed) == 2 and check.checked == 6
    assert len(set(check.params)) == 3  # dense, one block less, two blocks less
    ema = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook').ema_model
    for model in (runner.model, ema.module):
        assert all(isinstance(model.get_submodule(n), SkippedBlock) for n in removed)
    assert {k: v.shape for k, v in ema.module.state_dict().items()} == \
        {k: v.shape for k, v in runner.model.state_dict().items()}

    resumed = iter_runner(DET_CFG, tmp_path / 'resumed', opts,
                          [hook, dict(type='EMAHook', momentum=0.5)], max_iters=6,
                          checkpoint_interval=2)
    resumed.cfg.resume = True
    resumed._resume, resumed._load_from = True, str(tmp_path / 'full' / 'iter_2.pth')
    resumed.train()
    again = next(h for h in resumed.hooks if isinstance(h, PruningHook))
    assert again.done == [1, 3] and sorted(again.structure['removed'])[:1] == removed[:1]
    assert len(again.structure['removed']) == 2
    assert all(isinstance(resumed.model.get_submodule(n), SkippedBlock)
               for n in again.structure['removed'])
