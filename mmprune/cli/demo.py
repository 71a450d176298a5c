"""The whole story on the embedded shapes dataset, with no downloads.

    mmprune demo [--work-dir work_dirs/demo] [--targets 0.5] [--finetune-epochs 16]
                 [--finetune-lr 2e-3] [--seed 0] [--retrain] [--data-root data/shapes/]
                 [--epochs N]

(``python tools/demo.py`` takes the same arguments.)

1. trains the dense demo detector (``configs/demo/retinanet_r18_shapes.py``)
   with the host Runner (reused from ``<work-dir>/dense`` when already there,
   whatever seed trained it: give each seed its own ``--work-dir``);
2. for each FLOPs target, runs the recommended recipe, as ``mmprune train``
   does: a ``PruningHook`` prunes the dense model in three steps (epochs 0, 1
   and 2, re-scoring in between) while it finetunes for ``--finetune-epochs``
   epochs with the config's optimizer (AdamW) at ``--finetune-lr`` and a cosine
   schedule;
3. evaluates every model with mmdet's COCO metric, times them interleaved, and
   prints the dense-vs-pruned table; writes ``<work-dir>/demo.md``,
   ``demo.json`` and ``demo.png`` (metric vs FLOPs and vs latency).

``--seed`` seeds both the dense training and the pruning runs (CPU training is
not bit-for-bit repeatable, so runs with the same seed still differ a little).
"""
from __future__ import annotations

import argparse
import os.path as osp
import time

from mmprune.configs import config_path

CONFIG = 'mmprune::demo/retinanet_r18_shapes.py'


def data_options(data_root: str | None, epochs: int | None) -> list:
    """``--cfg-options`` strings for another data folder / a shorter dense run."""
    opts = []
    if data_root:
        root = data_root.rstrip('/') + '/'
        opts += [f'{k}.dataset.data_root={root}' for k in
                 ('train_dataloader', 'val_dataloader', 'test_dataloader')]
        opts += [f'{k}.ann_file={root}val.json' for k in ('val_evaluator', 'test_evaluator')]
    if epochs:
        opts += [f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
                 f'default_hooks.checkpoint.interval={epochs}',
                 f'param_scheduler.1.end={epochs}', f'param_scheduler.1.T_max={epochs}']
    return opts


def _merge(cfg, options: list) -> None:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    if options:
        cfg.merge_from_dict(parser.parse_args(['--o', *options]).o)


def train_dense(config: str, work_dir: str, retrain: bool, options: list) -> str:
    from mmengine.runner import Runner

    from mmprune.apis import load_config  # importing mmprune: safe loading, registries
    cfg = load_config(config)
    _merge(cfg, options)
    final = osp.join(work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    if osp.isfile(final) and not retrain:
        print(f'dense model: reusing {final} (--retrain to train again)')
        return final
    cfg.work_dir = work_dir
    Runner.from_cfg(cfg).train()
    return final


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='mmprune demo', description=__doc__.split('\n')[0])
    p.add_argument('--config', default=CONFIG)
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'))
    p.add_argument('--targets', type=float, nargs='+', default=[0.5],
                   help='FLOPs fractions of the dense model')
    p.add_argument('--finetune-epochs', type=int, default=16,
                   help='epochs of the pruning run (its three steps are at epochs 0, 1, 2)')
    p.add_argument('--finetune-lr', type=float, default=2e-3,
                   help='peak learning rate of the pruning run (default: the dense run\'s)')
    p.add_argument('--seed', type=int, default=0, help='randomness.seed of every run')
    p.add_argument('--latency-runs', type=int, default=10, help='timed runs (0: not timed)')
    p.add_argument('--retrain', action='store_true', help='train the dense model again')
    p.add_argument('--data-root', help='where the shapes are drawn (default: data/shapes/)')
    p.add_argument('--epochs', type=int, help='dense training epochs (default: the config\'s)')
    args = p.parse_args(argv)
    if args.finetune_epochs < 1:
        p.error('--finetune-epochs must be at least 1')
    return args


def main(argv=None) -> dict:
    from mmprune.cli import train
    from mmprune.evaluation import side_by_side_latency, write_sizes
    args = parse_args(argv)
    config = config_path(args.config)
    seed = [f'randomness.seed={args.seed}']
    t0 = time.time()
    dense = train_dense(config, osp.join(args.work_dir, 'dense'), args.retrain,
                        data_options(args.data_root, args.epochs) + seed)
    t1 = time.time()
    # the recipe: three pruning steps at epochs 0, 1, 2 (fewer in a shorter run), then
    # finetuning to the end of a cosine schedule of --finetune-epochs epochs
    steps = min(3, args.finetune_epochs)
    rows = []
    for target in args.targets:
        summary = train.main([
            config, '--checkpoint', dense, '--target-flops', str(target),
            '--begin', '0', '--end', str(steps), '--interval', '1',
            '--work-dir', osp.join(args.work_dir, f'flops{target:g}'),
            '--cfg-options', *data_options(args.data_root, args.finetune_epochs), *seed,
            f'optim_wrapper.optimizer.lr={args.finetune_lr}'])
        pruned, dense_row = summary['compare']
        if not rows:
            rows.append(dict(dense_row, size='dense'))
        rows.append(dict(pruned, size=f'flops{target:g}'))
    for r in rows:
        r['tag'] = r['size']
    side_by_side_latency(rows, None, args.latency_runs)
    result = write_sizes(
        rows, args.work_dir, 'demo', args.latency_runs,
        f'seed {args.seed}; pruned in {steps} PruningHook steps while finetuning '
        f'{args.finetune_epochs} epochs from the dense model (AdamW, peak lr '
        f'{args.finetune_lr:g}, cosine)', seed=args.seed)
    key = result['metric']
    dense_row, pruned = rows[0], rows[1:]
    print(f'\ndense {key} {dense_row["metrics"].get(key, float("nan")):.4f}; ' + '; '.join(
        f'{r["size"]} {r["metrics"].get(key, float("nan")):.4f} '
        f'({r["flops"] / dense_row["flops"]:.1%} FLOPs)' for r in pruned))
    print(f'dense training {t1 - t0:.0f} s, pruning + finetuning + evaluation '
          f'{time.time() - t1:.0f} s; table and plot: {osp.join(args.work_dir, "demo.md")}, '
          f'{osp.join(args.work_dir, "demo.png")}')
    return result


if __name__ == '__main__':
    main()
