"""Prune while training (or prune, then finetune) with the host's own Runner.

    mmprune train CONFIG [--checkpoint DENSE.pth] [--target-flops 0.5 |
        --ratio 0.3] [--importance l2] [--begin 0 --end 6 --interval 1 --by-iter]
        [--distill cwd|mse] [--work-dir DIR] [--resume] [--amp] [--launcher pytorch]
        [--latency-runs N] [--cfg-options ...]

(``python tools/prune_train.py`` takes the same arguments.) The config's own
``custom_hooks`` may already hold an ``mmprune.PruningHook``; pruning flags add one
(or override the one there). ``--checkpoint`` is the dense model's ``load_from``;
``--distill`` adds an ``mmprune.DistillHook`` (the dense model teaches the pruned
one while it finetunes, its teacher loaded from ``--checkpoint``). Training,
validation, checkpoints and logs are the host Runner's; the pruned structure travels
in every checkpoint, and the run ends by writing ``<name>_pruned.py`` (load it with
``init_detector`` / ``init_model`` and any of the run's checkpoints) and
``prune_train_summary.json``. A single-process run then evaluates the best (else
last) checkpoint as ``mmprune test`` does and, given ``--checkpoint``, the dense
model too, and prints the side-by-side table (metric and delta, params, FLOPs, size;
latency only when asked with ``--latency-runs N``, since timing R50 models on a CPU
takes minutes); ``--no-compare`` skips it.

Distributed runs on CPU (``torchrun --nproc_per_node N ... --launcher pytorch``):
mmengine 0.10.7's launcher calls ``torch.cuda.set_device`` and gives DDP the
local rank as device id, both of which fail without a GPU, so when CUDA is
absent this script starts the gloo process group itself and wraps the model
in ``MMDistributedDataParallel`` without device ids.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp

import mmprune  # registers mmprune types, safe checkpoint loading
from mmprune.apis import load_config
from mmprune.checkpoint import atomic_write
from mmprune.cli import add_block_flags, block_request
from mmprune.distill import LOSSES
from mmprune.schedule import RAMPS

HOOK = 'mmprune.PruningHook'
DISTILL_HOOK = 'mmprune.DistillHook'


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(prog='mmprune train', description=__doc__.split('\n')[0])
    p.add_argument('config', help='train config (path, or mmdet::, mmseg:: or mmprune:: name)')
    p.add_argument('--checkpoint', help='dense weights to start from (the run\'s load_from)')
    p.add_argument('--work-dir', help='where logs and checkpoints go')
    p.add_argument('--ratio', type=float, dest='pruning_ratio', help='final channel ratio')
    p.add_argument('--target-flops', type=float, help='final FLOPs, fraction of dense')
    p.add_argument('--target-latency', type=float,
                   help='final latency, fraction of dense, measured where the run trains')
    p.add_argument('--importance', help='criterion (default: the hook\'s, group_l2)')
    p.add_argument('--begin', type=int, help='first pruning epoch / iteration')
    p.add_argument('--end', type=int, help='no pruning step at or after this point')
    p.add_argument('--interval', type=int, help='epochs / iterations between steps')
    p.add_argument('--by-iter', action='store_true', help='count begin/end/interval in iterations')
    p.add_argument('--ramp', choices=tuple(RAMPS))
    p.add_argument('--round-to', type=int)
    p.add_argument('--allocation', choices=('uniform', 'latency'),
                   help='ratio per group: the same (default) or weighted by measured time per FLOP')
    add_block_flags(p)
    p.add_argument('--distill', choices=sorted(LOSSES),
                   help='distil the dense model\'s outputs into the pruned one (DistillHook)')
    p.add_argument('--distill-weight', type=float, help='loss weight of --distill (default 3)')
    p.add_argument('--resume', action='store_true', help='resume from the latest checkpoint')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    p.add_argument('--no-compare', action='store_true',
                   help='skip the final dense-vs-pruned evaluation (metric, size, latency)')
    p.add_argument('--latency-runs', type=int, default=0,
                   help='timed runs for the closing table\'s latency (default 0: not timed)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, as in the host tools')
    args = p.parse_args(argv)
    if args.distill_weight is not None and not args.distill:
        p.error('--distill-weight needs --distill')
    return args


def hook_cfg(cfg, args) -> None:
    """Add or update the PruningHook in ``cfg.custom_hooks`` from the flags."""
    flags = dict(pruning_ratio=args.pruning_ratio, target_flops=args.target_flops,
                 importance=args.importance, begin=args.begin, end=args.end,
                 interval=args.interval, ramp=args.ramp, round_to=args.round_to,
                 allocation=args.allocation, remove_blocks=block_request(args.remove_blocks),
                 target_latency=args.target_latency,
                 block_criterion=args.block_criterion)
    flags = {k: v for k, v in flags.items() if v is not None}
    if args.by_iter:
        flags['by_epoch'] = False
    hooks = list(cfg.get('custom_hooks') or [])
    mine = [h for h in hooks if 'PruningHook' in str(h.get('type', ''))]
    if not mine:
        if not flags:
            raise SystemExit(f'{args.config} has no {HOOK} in custom_hooks; give pruning flags '
                             f'(--target-flops, --ratio or --remove-blocks) to add one')
        mine = [dict(type=HOOK)]
        hooks.append(mine[0])
    targets = ('pruning_ratio', 'target_flops', 'target_latency')
    for given in targets:  # a target flag replaces the config's
        if given in flags:
            for other in targets:
                if other != given:
                    mine[0].pop(other, None)
    mine[0].update(flags)
    if args.distill:
        hooks = [h for h in hooks if 'DistillHook' not in str(h.get('type', ''))]
        distill = dict(type=DISTILL_HOOK, loss=args.distill, teacher_checkpoint=args.checkpoint)
        if args.distill_weight is not None:
            distill['loss_weight'] = args.distill_weight
        hooks.append(distill)
    cfg.custom_hooks = hooks


def init_cpu_dist(cfg, launcher: str) -> None:
    """gloo process group and a DDP wrapper without device ids, for CPU-only machines."""
    import torch
    import torch.distributed as dist
    if launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group('gloo')
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    wrapper['device_ids'] = None  # mmengine passes the local rank, which CPU DDP refuses
    cfg.model_wrapper_cfg = wrapper


def final_checkpoint(work_dir: str) -> str:
    """The run's best checkpoint (``save_best``) if there is one, else its last."""
    import glob
    best = sorted(glob.glob(osp.join(work_dir, 'best_*.pth')), key=osp.getmtime)
    if best:
        return best[-1]
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def compare(runner, pruned_config: str, dense_config: str, args) -> dict:
    """Evaluate the finetuned pruned model (and the dense start) as ``mmprune test`` does."""
    from mmprune.evaluation import evaluate, side_by_side_latency, table
    ckpt = final_checkpoint(runner.work_dir)
    work_dir = osp.join(runner.work_dir, 'compare')
    rows = [dict(tag='pruned', **evaluate(pruned_config, ckpt, work_dir, 'pruned',
                                          latency_runs=args.latency_runs))]
    if args.checkpoint:  # the hook wrote the run's config without itself as <name>_dense.py
        rows.append(dict(tag='dense', **evaluate(dense_config, args.checkpoint, work_dir, 'dense',
                                                 latency_runs=args.latency_runs)))
        side_by_side_latency(rows, None, args.latency_runs)
    text = table(rows)
    print('\n' + text)
    return dict(compare=rows, table=text)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    hook_cfg(cfg, args)
    name = osp.splitext(osp.basename(cfg.filename or args.config))[0]
    cfg.work_dir = args.work_dir or cfg.get('work_dir') or osp.join('work_dirs', name)
    cfg.launcher = args.launcher
    if args.checkpoint:
        cfg.load_from = args.checkpoint
    if args.resume:
        # mmengine resumes from load_from when it is set: that would be the dense checkpoint
        from mmengine.runner.checkpoint import find_latest_checkpoint
        latest = find_latest_checkpoint(cfg.work_dir)
        if latest is not None:
            cfg.resume, cfg.load_from = True, latest
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    init_cpu_dist(cfg, args.launcher)

    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    runner = (Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg))
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'PruningHook')
    summary = dict(config=args.config, work_dir=runner.work_dir,
                   structure_hash=mmprune.structure_hash(hook.structure), steps_done=hook.done,
                   dense=hook.dense, pruned=hook.current,
                   flops_ratio=hook.current['flops'] / hook.dense['flops'],
                   params_ratio=hook.current['params'] / hook.dense['params'],
                   metrics={k: float(v) for k, v in hook.last_metrics.items()})
    if runner.world_size > 1 and not args.no_compare:
        runner.logger.info('[mmprune] distributed run: for the dense-vs-pruned table run '
                           'mmprune test PRUNED_CONFIG CKPT --compare DENSE_CONFIG DENSE_CKPT')
    elif not args.no_compare and getattr(hook, 'pruned_config', None):
        summary.update(compare(runner, hook.pruned_config, hook.dense_config, args))
    if runner.rank == 0:
        path = osp.join(runner.work_dir, 'prune_train_summary.json')
        atomic_write(path, lambda p: json.dump(summary, open(p, 'w'), indent=1), overwrite=True)
        print(json.dumps({k: summary[k] for k in ('structure_hash', 'flops_ratio',
                                                  'params_ratio', 'metrics')}))
    return summary


if __name__ == '__main__':
    main()
