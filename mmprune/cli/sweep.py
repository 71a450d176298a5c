"""Compare model sizes side by side: prune to several sizes, (finetune,) evaluate, plot.

    mmprune sweep CONFIG --checkpoint DENSE.pth --ratios 0.2 0.4 0.6
        [--target-flops 0.7 0.5 0.3] [--importance l2] [--finetune-iters N]
        [--work-dir DIR] [--input-shape H W] [--latency-runs 10] [--cfg-options ...]

(``python tools/sweep.py`` takes the same arguments.) For each size the dense
weights are pruned (``mmprune prune``'s files are
written under ``<work-dir>/<size>/``), optionally finetuned for N iterations
with the host Runner, and evaluated with the config's own metric; the dense
model is the first row. Writes ``sweep.md`` (table), ``sweep.png`` (metric vs
FLOPs and vs CPU latency) and ``sweep.json`` (:func:`mmprune.evaluation.write_sizes`).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import time

import mmprune
from mmprune.apis import build_model, load_config
from mmprune.evaluation import evaluate, side_by_side_latency, write_sizes


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(prog='mmprune sweep', description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', help='dense weights (random init when omitted)')
    p.add_argument('--ratios', type=float, nargs='+', default=[], help='channel pruning ratios')
    p.add_argument('--target-flops', type=float, nargs='+', default=[],
                   help='FLOPs fractions of the dense model')
    p.add_argument('--importance', default=mmprune.importance.DEFAULT_IMPORTANCE)
    p.add_argument('--finetune-iters', type=int, default=0)
    p.add_argument('--round-to', type=int, default=mmprune.options.DEFAULT_ROUND_TO,
                   help='kept channel counts are multiples of this (1: exact counts)')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'))
    p.add_argument('--work-dir')
    p.add_argument('--latency-runs', type=int, default=10, help='timed runs (0: not timed)')
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


def finish(rows: list, args) -> dict:
    """Time all sizes interleaved in one process, then write the table, JSON and plot."""
    for r in rows:
        r['tag'] = r['size']
    side_by_side_latency(rows, args.cfg_options, args.latency_runs)
    finetune_iters = max((r.get('finetune_iters') or 0 for r in rows), default=0)
    return write_sizes(rows, args.work_dir, 'sweep', args.latency_runs,
                       f'{args.importance} importance; finetune {finetune_iters} iterations '
                       f'per size', importance=args.importance)


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
    eval_opts = dict(cfg_options=args.cfg_options, latency_runs=args.latency_runs)
    rows = [dict(size='dense', **evaluate(dense_cfg_path, dense_ckpt, args.work_dir, 'dense',
                                          **eval_opts))]
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
                         **evaluate(cfg_path, ckpt, args.work_dir, tag, **eval_opts)))
        progress.update()
    return finish(rows, args)


if __name__ == '__main__':
    main()
