"""Best accuracy per FLOP: importance criteria and schedules under one finetune budget.

    python benchmarks/criteria.py CONFIG --checkpoint DENSE.pth [--target-flops 0.5]
        [--iters 60] [--lr 2e-4] [--variants l2 taylor ...] [--schedule-importance l2]
        [--work-dir DIR]

Every variant starts from the same dense checkpoint and runs the same number
of training iterations at the same constant learning rate through
``tools/prune_train.py`` (the host Runner with a ``PruningHook``), ending at
``--target-flops`` of the dense FLOPs and evaluated with the config's own
metric on its val set. Variants:

* one-shot criteria (``l1``, ``l2``, ``group_l2``, ``lamp``, ``fpgm``,
  ``taylor``, ``group_taylor``, ``hessian``, ``bn_scale``, ``random``): one
  prune at iteration 0, then ``--iters`` iterations of finetuning;
* ``sparse_bn_scale``: the first third of the budget trains with the
  ``bn_scale`` sparsity penalty (``mmprune.SparseOptimWrapperConstructor``),
  then one ``bn_scale`` prune, then the rest;
* ``iterative``: one prune in 5 re-scored steps at iteration 0;
* ``progressive``: three steps at iterations 0, 1/6 and 2/6 of the budget
  (linear ramp), training in between;

both with ``--schedule-importance`` (default ``l2``).

Each variant runs in its own process; results are appended to
``<work-dir>/criteria.json`` as they finish (a rerun skips finished variants)
and the table is written to ``<work-dir>/criteria.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

ONE_SHOT = ('l1', 'l2', 'group_l2', 'lamp', 'fpgm', 'taylor', 'group_taylor', 'hessian',
            'bn_scale', 'random')
VARIANTS = ONE_SHOT + ('sparse_bn_scale', 'iterative', 'progressive')
DEFAULT = ('progressive', 'l2', 'iterative', 'l1', 'group_l2', 'lamp', 'taylor', 'hessian',
           'sparse_bn_scale', 'random')


def hook_for(variant: str, target: float, iters: int, schedule_importance: str = 'l2') -> dict:
    hook = dict(type='mmprune.PruningHook', target_flops=target, by_epoch=False, begin=0)
    if variant in ONE_SHOT:
        hook['importance'] = variant
    elif variant == 'sparse_bn_scale':
        hook.update(importance='bn_scale', begin=iters // 3)
    elif variant == 'iterative':
        hook.update(importance=schedule_importance, iterative_steps=5)
    elif variant == 'progressive':
        step = max(iters // 6, 1)
        hook.update(importance=schedule_importance, end=3 * step, interval=step)
    else:
        raise ValueError(f'unknown variant {variant!r}; choose from {VARIANTS}')
    return hook


def variant_config(base: str, variant: str, args) -> str:
    """Dump the config of one variant: iteration-based, constant lr, one PruningHook."""
    from mmprune.apis import load_config
    cfg = load_config(base)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters, val_interval=args.iters)
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = args.lr
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.train_dataloader.num_workers = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=args.iters,
                                        by_epoch=False, save_optimizer=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=10)
    cfg.log_processor = dict(by_epoch=False)
    cfg.randomness = dict(seed=args.seed)
    cfg.custom_hooks = [h for h in (cfg.get('custom_hooks') or [])
                        if 'PruningHook' not in str(h.get('type', ''))]
    cfg.custom_hooks.append(hook_for(variant, args.target_flops, args.iters,
                                     args.schedule_importance))
    if variant == 'sparse_bn_scale':
        cfg.optim_wrapper.constructor = 'mmprune.SparseOptimWrapperConstructor'
        cfg.optim_wrapper.sparsity = dict(mode='bn_scale', reg=args.sparsity_reg)
    path = osp.join(args.work_dir, variant, f'{variant}.py')
    os.makedirs(osp.dirname(path), exist_ok=True)
    cfg.dump(path)
    return path


def table(results: dict, target: float, iters: int) -> str:
    from mmprune.evaluation import main_metric
    rows = [r for r in results.values() if r.get('metrics')]
    if not rows:
        return 'no finished variant'
    key = main_metric(rows[0]['metrics'])
    lines = [f'| variant | importance | {key} | FLOPs ratio | params ratio | minutes |',
             '|---|---|---|---|---|---|']
    for r in sorted(rows, key=lambda r: -r['metrics'].get(key, float('-inf'))):
        lines.append(f"| {r['variant']} | {r['importance']} | {r['metrics'][key]:.4f} | "
                     f"{r['flops_ratio']:.1%} | {r['params_ratio']:.1%} | {r['minutes']:.1f} |")
    failed = [r for r in results.values() if not r.get('metrics')]
    for r in failed:
        lines.append(f"| {r['variant']} | failed: {r.get('error', '?')} | | | | |")
    lines.append(f'\ntarget {target:.0%} of dense FLOPs; {iters} training iterations per '
                 f'variant at a constant learning rate, all from the same dense checkpoint.')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', required=True, help='dense weights every variant starts from')
    p.add_argument('--target-flops', type=float, default=0.5)
    p.add_argument('--iters', type=int, default=60)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--sparsity-reg', type=float, default=1e-4)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--variants', nargs='+', default=list(DEFAULT), choices=VARIANTS)
    p.add_argument('--schedule-importance', default='l2',
                   help='criterion of the iterative and progressive variants')
    p.add_argument('--work-dir')
    args = p.parse_args(argv)
    name = osp.splitext(osp.basename(args.config))[0]
    args.work_dir = args.work_dir or osp.join('work_dirs', f'criteria_{name}')
    os.makedirs(args.work_dir, exist_ok=True)
    from mmprune.checkpoint import atomic_write
    out = osp.join(args.work_dir, 'criteria.json')
    results = json.load(open(out))['results'] if osp.exists(out) else {}
    for variant in args.variants:
        if results.get(variant, {}).get('metrics'):
            continue
        cfg_path = variant_config(args.config, variant, args)
        vdir = osp.dirname(cfg_path)
        t0 = time.time()
        with open(osp.join(vdir, 'run.log'), 'w') as log:
            proc = subprocess.run(
                [sys.executable, '-m', 'mmprune', 'train', cfg_path,
                 '--checkpoint', args.checkpoint, '--work-dir', vdir, '--no-compare'],
                stdout=log, stderr=subprocess.STDOUT)
        hook = hook_for(variant, args.target_flops, args.iters, args.schedule_importance)
        rec = dict(variant=variant, importance=hook['importance'], hook=hook,
                   minutes=(time.time() - t0) / 60, returncode=proc.returncode)
        summary = osp.join(vdir, 'prune_train_summary.json')
        if proc.returncode == 0 and osp.exists(summary):
            s = json.load(open(summary))
            rec.update(metrics=s['metrics'], flops_ratio=s['flops_ratio'],
                       params_ratio=s['params_ratio'], structure_hash=s['structure_hash'])
        else:
            tail = open(osp.join(vdir, 'run.log')).read().strip().splitlines()[-1:]
            rec['error'] = tail[0][:200] if tail else f'exit {proc.returncode}'
        results[variant] = rec
        atomic_write(out, lambda f: json.dump(dict(config=args.config, checkpoint=args.checkpoint,
                                                   target_flops=args.target_flops,
                                                   iters=args.iters, lr=args.lr,
                                                   results=results), open(f, 'w'), indent=1),
                     overwrite=True)
        print(f'[criteria] {variant}: {rec.get("metrics", rec.get("error"))} '
              f'({rec["minutes"]:.1f} min)', flush=True)
    text = table(results, args.target_flops, args.iters)
    print('\n' + text)
    atomic_write(osp.join(args.work_dir, 'criteria.md'),
                 lambda f: open(f, 'w').write(text + '\n'), overwrite=True)
    return results


if __name__ == '__main__':
    main()
