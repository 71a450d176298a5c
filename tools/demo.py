"""The whole story on the embedded shapes dataset, with no downloads.

    python tools/demo.py [--work-dir work_dirs/demo] [--targets 0.5] [--finetune-iters 240]
                         [--retrain] [--data-root data/shapes/] [--epochs N]

1. trains the dense demo detector (``configs/demo/retinanet_r18_shapes.py``)
   with the host Runner (reused from ``<work-dir>/dense`` when already there);
2. prunes it to each FLOPs target, finetunes, evaluates (``tools/sweep.py``);
3. prints the dense-vs-pruned table (COCO mAP, params, FLOPs, CPU latency) and
   writes ``<work-dir>/sweep/sweep.png`` (metric vs FLOPs and vs latency).
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

CONFIG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', 'demo',
                  'retinanet_r18_shapes.py')


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
                 f'default_hooks.checkpoint.interval={epochs}']
    return opts


def train_dense(config: str, work_dir: str, retrain: bool, options: list) -> str:
    from mmengine.config import DictAction
    from mmengine.runner import Runner

    from mmprune.apis import load_config  # importing mmprune: safe loading, registries
    cfg = load_config(config)
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    if options:
        cfg.merge_from_dict(parser.parse_args(['--o', *options]).o)
    final = osp.join(work_dir, f'epoch_{cfg.train_cfg.max_epochs}.pth')
    if osp.isfile(final) and not retrain:
        print(f'dense model: reusing {final} (--retrain to train again)')
        return final
    cfg.work_dir = work_dir
    Runner.from_cfg(cfg).train()
    return final


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', default=CONFIG)
    p.add_argument('--work-dir', default=osp.join('work_dirs', 'demo'))
    p.add_argument('--targets', type=float, nargs='+', default=[0.5],
                   help='FLOPs fractions of the dense model')
    p.add_argument('--finetune-iters', type=int, default=240)
    p.add_argument('--finetune-lr', type=float, default=5e-4)
    p.add_argument('--retrain', action='store_true', help='train the dense model again')
    p.add_argument('--data-root', help='where the shapes are drawn (default: data/shapes/)')
    p.add_argument('--epochs', type=int, help='dense training epochs (default: the config\'s)')
    args = p.parse_args(argv)
    options = data_options(args.data_root, args.epochs)
    t0 = time.time()
    dense = train_dense(args.config, osp.join(args.work_dir, 'dense'), args.retrain, options)
    t1 = time.time()
    import sweep  # tools/sweep.py
    result = sweep.main([args.config, '--checkpoint', dense, '--target-flops',
                         *map(str, args.targets), '--finetune-iters', str(args.finetune_iters),
                         '--work-dir', osp.join(args.work_dir, 'sweep'),
                         '--cfg-options', f'optim_wrapper.optimizer.lr={args.finetune_lr}',
                         *options])
    key = result['metric']
    dense_row, pruned = result['rows'][0], result['rows'][1:]
    print(f'\ndense {key} {dense_row["metrics"].get(key, float("nan")):.4f}; ' + '; '.join(
        f'{r["size"]} {r["metrics"].get(key, float("nan")):.4f} ({r["flops"] / dense_row["flops"]:.1%} FLOPs)'
        for r in pruned))
    print(f'dense training {t1 - t0:.0f} s, prune + finetune + evaluation {time.time() - t1:.0f} s;'
          f' plot: {osp.join(args.work_dir, "sweep", "sweep.png")}')
    return result


if __name__ == '__main__':
    main()
