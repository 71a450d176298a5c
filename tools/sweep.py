"""Compare model sizes side by side: prune to several sizes, (finetune,) evaluate, plot.

    python tools/sweep.py CONFIG --checkpoint DENSE.pth --ratios 0.2 0.4 0.6
        [--target-flops 0.7 0.5 0.3] [--importance l2] [--finetune-iters N]
        [--work-dir DIR] [--input-shape H W] [--cfg-options ...]

For each size the dense weights are pruned (``tools/prune.py``'s files are
written under ``<work-dir>/<size>/``), optionally finetuned for N iterations
with the host Runner, and evaluated with the config's own metric; the dense
model is the first row. Writes ``sweep.md`` (table), ``sweep.png`` (metric vs
FLOPs and vs CPU latency) and ``sweep.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmprune  # noqa: E402
from mmprune.apis import build_model, load_config  # noqa: E402
from mmprune.checkpoint import atomic_write  # noqa: E402

from test import evaluate, main_metric, side_by_side_latency  # noqa: E402  (tools/test.py)


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', help='dense weights (random init when omitted)')
    p.add_argument('--ratios', type=float, nargs='+', default=[], help='channel pruning ratios')
    p.add_argument('--target-flops', type=float, nargs='+', default=[],
                   help='FLOPs fractions of the dense model')
    p.add_argument('--importance', default=mmprune.importance.DEFAULT_IMPORTANCE)
    p.add_argument('--finetune-iters', type=int, default=0)
    p.add_argument('--round-to', type=int, default=mmprune.pruner.DEFAULT_ROUND_TO,
                   help='kept channel counts are multiples of this (1: exact counts)')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'))
    p.add_argument('--work-dir')
    p.add_argument('--latency-runs', type=int, default=10)
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--retime', action='store_true',
                   help='only re-time the models of an earlier sweep in --work-dir (e.g. on a '
                        'quiet machine) and rewrite its table and plot')
    args = p.parse_args(argv)
    if not args.ratios and not args.target_flops and not args.retime:
        p.error('give --ratios and/or --target-flops')
    return args


def finetune(cfg_path: str, ckpt: str, iters: int, work_dir: str, cfg_options) -> str:
    """``iters`` iterations of the host Runner from ``ckpt``; returns the new checkpoint."""
    from mmengine.runner import Runner
    cfg = load_config(cfg_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.load_from = ckpt
    cfg.resume = False
    cfg.work_dir = work_dir
    cfg.experiment_name = f'finetune_{int(time.time() * 1000)}'
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    cfg.param_scheduler = []
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=iters, by_epoch=False,
                                        save_optimizer=False)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    Runner.from_cfg(cfg).train()
    return osp.join(work_dir, f'iter_{iters}.pth')


def plot(rows: list, key: str, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (field, label) in zip(axes, (('flops', 'GFLOPs (MACs)'),
                                          ('cpu_latency_ms', 'CPU latency (ms)'))):
        xs = [r[field] / (1e9 if field == 'flops' else 1) for r in rows]
        ys = [r['metrics'].get(key, float('nan')) for r in rows]
        ax.plot(xs[1:], ys[1:], 'o-', label='pruned')
        ax.plot(xs[:1], ys[:1], 's', color='k', label='dense')
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(r['size'], (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finish(rows: list, args) -> dict:
    """Time all sizes interleaved in one process, then write the table, JSON and plot."""
    for r in rows:
        r['tag'] = r['size']
    side_by_side_latency(rows, args)
    key = main_metric(rows[0]['metrics'])
    dense = rows[0]
    lines = [f'| size | {key} | delta | params (M) | FLOPs (G) | FLOPs ratio | CPU ms | speed-up |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        v = r['metrics'].get(key, float('nan'))
        lines.append(f"| {r['size']} | {v:.4f} | {v - dense['metrics'].get(key, float('nan')):+.4f} "
                     f"| {r['params'] / 1e6:.3f} | {r['flops'] / 1e9:.4f} | "
                     f"{r['flops'] / dense['flops']:.1%} | {r['cpu_latency_ms']:.2f} | "
                     f"{dense['cpu_latency_ms'] / r['cpu_latency_ms']:.2f}x |")
    shape_txt = 'x'.join(map(str, dense['input_shape']))
    finetune_iters = max((r.get('finetune_iters') or 0 for r in rows), default=0)
    lines.append(f'\n{args.importance} importance; finetune {finetune_iters} iterations per '
                 f'size; FLOPs = MACs at {shape_txt}; CPU latency = median inference forward, batch 1, '
                 f'all sizes interleaved in one process ({args.latency_runs} runs).')
    text = '\n'.join(lines)
    print('\n' + text)
    atomic_write(osp.join(args.work_dir, 'sweep.md'), lambda p: open(p, 'w').write(text + '\n'),
                 overwrite=True)
    atomic_write(osp.join(args.work_dir, 'sweep.json'),
                 lambda p: json.dump(dict(rows=rows, metric=key, importance=args.importance),
                                     open(p, 'w'), indent=1),
                 overwrite=True)
    plot(rows, key, osp.join(args.work_dir, 'sweep.png'))
    return dict(rows=rows, metric=key)


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = osp.splitext(osp.basename(args.config))[0]
    args.work_dir = args.work_dir or osp.join('work_dirs', f'sweep_{name}')
    os.makedirs(args.work_dir, exist_ok=True)
    if args.retime:
        earlier = json.load(open(osp.join(args.work_dir, 'sweep.json')))
        args.importance = earlier.get('importance', args.importance)
        return finish(earlier['rows'], args)
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    dense_cfg_path = osp.join(args.work_dir, f'{name}_dense.py')
    cfg.dump(dense_cfg_path)
    dense_ckpt = args.checkpoint
    if dense_ckpt is None:  # random init, saved so every size starts from the same weights
        import torch
        model, _ = build_model(copy.deepcopy(cfg))
        dense_ckpt = osp.join(args.work_dir, f'{name}_dense_init.pth')
        torch.save(dict(state_dict=model.state_dict()), dense_ckpt)
    shape = tuple(args.input_shape) if args.input_shape else None
    sizes = [('ratio', r) for r in args.ratios] + [('flops', f) for f in args.target_flops]
    rows = [dict(size='dense', **evaluate(dense_cfg_path, dense_ckpt, args, 'dense'))]
    from mmengine.utils import ProgressBar
    progress = ProgressBar(len(sizes))
    for kind, value in sizes:
        tag = f'{kind}{value:g}'
        model, mcfg = build_model(copy.deepcopy(cfg), dense_ckpt)
        opts = dict(importance=args.importance, input_shape=shape, round_to=args.round_to)
        opts.update(pruning_ratio=value) if kind == 'ratio' else opts.update(target_flops=value)
        result = mmprune.prune(model, cfg=mcfg, **opts)
        cfg_path, ckpt = mmprune.save_pruned(model, result.structure, mcfg,
                                             osp.join(args.work_dir, tag), name=name,
                                             overwrite=True)
        if args.finetune_iters:
            ckpt = finetune(cfg_path, ckpt, args.finetune_iters,
                            osp.join(args.work_dir, tag, 'finetune'), args.cfg_options)
        rows.append(dict(size=tag, finetune_iters=args.finetune_iters,
                         **evaluate(cfg_path, ckpt, args, tag)))
        progress.update()
    return finish(rows, args)


if __name__ == '__main__':
    main()
