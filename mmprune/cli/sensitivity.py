"""Layer sensitivity: prune one layer group at a time, evaluate, rank.

    mmprune sensitivity CONFIG --checkpoint DENSE.pth [--ratio 0.5]
        [--layers 'backbone.*' ...] [--max-layers N] [--val-samples 20]
        [--emit-ratios ratios.json --budget 0.3] [--work-dir DIR]

Each candidate layer (a conv or linear layer that ``prune()`` may prune,
optionally filtered by glob patterns) is pruned alone at ``--ratio`` together
with the layers coupled to it (torch-pruning's group), from the dense weights,
and the model is evaluated with the config's metric on the first
``--val-samples`` images of its test set. Layers whose pruning gives the same
structure (one coupled group) are measured once. Writes ``sensitivity.md``
(ranked: metric drop, FLOPs saved), ``sensitivity.png`` (bar plot) and
``sensitivity.json``; ``--emit-ratios`` writes per-layer ratios for
``pruning_ratio_dict`` (``--budget`` for the least sensitive groups, 0 for the
most sensitive, scaled in between).
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import os
import os.path as osp
import time

import torch.nn as nn

import mmprune
from mmprune.apis import build_model, load_config
from mmprune.checkpoint import atomic_write
from mmprune.evaluation import main_metric
from mmprune.tracing import find_output_layers, make_batch, tracing_state


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(prog='mmprune sensitivity', description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', help='dense weights (random init when omitted)')
    p.add_argument('--ratio', type=float, default=0.5)
    p.add_argument('--importance', default=mmprune.importance.DEFAULT_IMPORTANCE)
    p.add_argument('--layers', nargs='+', help='glob patterns of candidate layers')
    p.add_argument('--max-layers', type=int, help='measure at most this many groups')
    p.add_argument('--val-samples', type=int, default=20, help='test images per evaluation')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'))
    p.add_argument('--emit-ratios', help='write per-layer ratios (JSON) here')
    p.add_argument('--budget', type=float, default=0.3,
                   help='ratio given to the least sensitive groups by --emit-ratios')
    p.add_argument('--work-dir')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def candidates(model, cfg, patterns, shape):
    """Conv / linear layers outside the output layers, in model order."""
    batch = make_batch(model, cfg, shape)
    with tracing_state(model):
        outputs, _ = find_output_layers(model, batch)
    names = [n for n, m in model.named_modules()
             if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and n not in outputs]
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return names


def evaluator(cfg, samples: int, work_dir: str):
    """Evaluate a model in place with the config's test loop on the first ``samples`` images."""
    from mmengine.runner import Runner
    cfg = copy.deepcopy(cfg)
    cfg.test_dataloader.dataset.indices = samples
    cfg.work_dir = work_dir
    cfg.experiment_name = f'sensitivity_{int(time.time() * 1000)}'
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)

    def run(model):
        runner.model = model
        return {k: float(v) for k, v in runner.test().items()}
    return run


def measure(dense, layer, args, cfg, shape, seen, evaluate, base, key):
    """Prune ``layer``'s group alone and evaluate; None when its group was measured."""
    model = copy.deepcopy(dense)
    try:
        result = mmprune.prune(model, pruning_ratio=0.0, pruning_ratio_dict={layer: args.ratio},
                               importance=args.importance, cfg=cfg, input_shape=shape)
    except (ValueError, RuntimeError) as e:  # a layer the graph keeps, or cannot prune
        return dict(layer=layer, skipped=str(e).split('\n')[0][:200])
    digest = mmprune.structure_hash(result.structure)
    if digest in seen:
        seen[digest]['coupled'].append(layer)
        return None
    metrics = evaluate(model)
    row = dict(layer=layer, coupled=[], metric=metrics.get(key, float('nan')),
               drop=base.get(key, float('nan')) - metrics.get(key, float('nan')),
               flops_saved=1 - result.flops_ratio, params_saved=1 - result.params_ratio)
    seen[digest] = row
    print(f'{layer:50s} {key} {row["metric"]:.4f} (drop {row["drop"]:+.4f}), FLOPs saved '
          f'{row["flops_saved"]:.1%}', flush=True)
    return row


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    name = osp.splitext(osp.basename(args.config))[0]
    args.work_dir = args.work_dir or osp.join('work_dirs', f'sensitivity_{name}')
    os.makedirs(args.work_dir, exist_ok=True)
    shape = tuple(args.input_shape) if args.input_shape else None
    dense, cfg = build_model(cfg, args.checkpoint)
    evaluate = evaluator(cfg, args.val_samples, args.work_dir)
    base = evaluate(dense)
    key = main_metric(base)
    names = candidates(dense, cfg, args.layers, shape)
    rows, seen = [], {}
    from mmengine.utils import ProgressBar
    progress = ProgressBar(min(len(names), args.max_layers or len(names)))
    for layer in names:
        if args.max_layers and len(rows) >= args.max_layers:
            break
        row = measure(dense, layer, args, cfg, shape, seen, evaluate, base, key)
        if row is not None:
            rows.append(row)
            progress.update()
    measured = sorted((r for r in rows if 'skipped' not in r), key=lambda r: r['drop'])
    lines = [f'| rank | layer (+ coupled) | {key} | drop | FLOPs saved | params saved |',
             '|---|---|---|---|---|---|']
    for i, r in enumerate(measured, 1):
        extra = f' (+{len(r["coupled"])})' if r['coupled'] else ''
        lines.append(f"| {i} | {r['layer']}{extra} | {r['metric']:.4f} | {r['drop']:+.4f} | "
                     f"{r['flops_saved']:.1%} | {r['params_saved']:.1%} |")
    lines.append(f'\ndense {key} {base.get(key, float("nan")):.4f} on {args.val_samples} test '
                 f'images; each group pruned alone at ratio {args.ratio} ({args.importance}).')
    text = '\n'.join(lines)
    print('\n' + text)
    atomic_write(osp.join(args.work_dir, 'sensitivity.md'),
                 lambda p: open(p, 'w').write(text + '\n'), overwrite=True)
    report = dict(metric=key, dense=base, ratio=args.ratio, rows=rows)
    atomic_write(osp.join(args.work_dir, 'sensitivity.json'),
                 lambda p: json.dump(report, open(p, 'w'), indent=1), overwrite=True)
    if measured:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(8, max(2, 0.25 * len(measured))))
        ax.barh([r['layer'] for r in measured], [r['drop'] for r in measured])
        ax.invert_yaxis()
        ax.set_xlabel(f'{key} drop when pruned alone at {args.ratio}')
        fig.tight_layout()
        fig.savefig(osp.join(args.work_dir, 'sensitivity.png'), dpi=100)
        plt.close(fig)
    if args.emit_ratios and measured:
        drops = [r['drop'] for r in measured]
        lo, hi = min(drops), max(drops)
        ratios = {}
        for r in measured:
            share = 1.0 if hi == lo else (hi - r['drop']) / (hi - lo)
            for layer in [r['layer']] + r['coupled']:
                ratios[layer] = round(args.budget * share, 3)
        atomic_write(args.emit_ratios, lambda p: json.dump(ratios, open(p, 'w'), indent=1),
                     overwrite=True)
        report['ratios'] = ratios
    return report


if __name__ == '__main__':
    main()
