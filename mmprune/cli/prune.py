"""One-shot pruning of an mmdet / mmseg model into a pruned config + checkpoint.

    mmprune prune CONFIG [CHECKPOINT] --ratio 0.5 --out-dir work_dirs/x

(``python tools/prune.py`` takes the same arguments.) Writes ``<name>_dense.py``
(the dense config), ``<name>_pruned.py`` (a readable delta on it, with the pruned
structure), ``<name>_pruned.pth`` (host state_dict keys) and
``<name>_prune_summary.json``. Options come from the config's ``pruning =
dict(...)`` section when present; command-line flags override it. Without a
checkpoint the model is pruned from its random init (no downloads).
"""
from __future__ import annotations

import argparse
import json
import os
import time

from mmengine.config import DictAction

import mmprune
from mmprune.apis import (build_model, check_outputs, dataset_meta, dense_parent,
                          is_pruned_config, output_paths)
from mmprune.checkpoint import atomic_write
from mmprune.cli import add_block_flags, block_request


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='mmprune prune', description=__doc__.split('\n')[0])
    p.add_argument('config',
                   help='dense model config (path, or mmdet::, mmseg:: or mmprune:: name)')
    p.add_argument('checkpoint', nargs='?', help='dense weights; random init when omitted')
    p.add_argument('--out-dir', help='output folder (default work_dirs/<name>_pruned)')
    p.add_argument('--name', help='file name stem (default: the config name)')
    p.add_argument('--ratio', type=float, dest='pruning_ratio', help='channel pruning ratio')
    p.add_argument('--importance',
                   help='criterion: ' + ', '.join(mmprune.importance.importance_names()))
    p.add_argument('--target-flops', type=float, help='FLOPs to keep, fraction of dense')
    p.add_argument('--target-latency', type=float,
                   help='latency to keep, fraction of the model\'s, measured on this machine '
                        '(interleaved with a copy of it, at --input-shape)')
    p.add_argument('--latency-runs', type=int, help='timed forwards per trial of '
                                                    '--target-latency (default 10)')
    p.add_argument('--global-pruning', action='store_true', default=None)
    p.add_argument('--max-pruning-ratio', type=float)
    p.add_argument('--round-to', type=int)
    p.add_argument('--iterative-steps', type=int)
    p.add_argument('--allocation', choices=('uniform', 'latency'),
                   help='ratio per group: the same (default) or weighted by measured time per FLOP')
    p.add_argument('--ignored-layers', nargs='+', help='layer names or glob patterns to keep')
    p.add_argument('--layer-ratio', nargs='+', metavar='PATTERN=RATIO',
                   help='per-layer ratios, e.g. "backbone.layer4.*=0.3"')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='example input size (default: the config test pipeline)')
    add_block_flags(p)
    p.add_argument('--overwrite', action='store_true', help='replace existing output files')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, as in the host tools')
    return p.parse_args(argv)


def pruning_options(cfg, args) -> dict:
    opts = dict(cfg.get('pruning') or {})
    for key in ('pruning_ratio', 'importance', 'target_flops', 'global_pruning',
                'max_pruning_ratio', 'round_to', 'iterative_steps', 'ignored_layers',
                'allocation', 'block_criterion', 'target_latency', 'latency_runs'):
        value = getattr(args, key)
        if value is not None:
            opts[key] = value
    if args.remove_blocks:
        opts['remove_blocks'] = block_request(args.remove_blocks)
    if args.layer_ratio:
        ratios = {}
        for item in args.layer_ratio:
            pattern, sep, value = item.rpartition('=')
            if not sep:
                raise SystemExit(f'--layer-ratio expects PATTERN=RATIO, got {item!r}')
            ratios[pattern] = float(value)
        opts['pruning_ratio_dict'] = ratios
    if args.input_shape:
        opts['input_shape'] = tuple(args.input_shape)
    return opts


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = mmprune.apis.load_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    name = args.name or os.path.splitext(os.path.basename(cfg.filename or 'model'))[0]
    out_dir = args.out_dir or os.path.join('work_dirs', f'{name}_pruned')
    opts = pruning_options(cfg, args)
    # everything that can be refused is refused before the model is built and pruned
    dense_parent(cfg)
    summary_path = os.path.join(out_dir, f'{name}_prune_summary.json')
    check_outputs([*output_paths(out_dir, name), summary_path], args.overwrite)
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')

    if opts.get('target_latency') is not None:
        from mmprune.timing import steady_malloc
        steady_malloc()  # as the benchmarks time: freed memory is reused, not faulted in
    t0 = time.perf_counter()
    model, cfg = build_model(cfg, args.checkpoint)
    t1 = time.perf_counter()
    result = mmprune.prune(model, cfg=cfg, **opts)
    t2 = time.perf_counter()
    summary = dict(
        config=args.config, checkpoint=args.checkpoint, options=result.options,
        params_dense=result.params[0], params_pruned=result.params[1],
        flops_dense=result.flops[0], flops_pruned=result.flops[1],
        flops_ratio=round(result.flops_ratio, 4), params_ratio=round(result.params_ratio, 4),
        output_layers=result.output_layers, removed_blocks=result.removed_blocks,
        latency_ms=list(result.latency) if result.latency else None,
        structure_hash=mmprune.structure_hash(result.structure),
        build_s=round(t1 - t0, 2), prune_s=round(t2 - t1, 2))
    cfg_path, ckpt_path = mmprune.save_pruned(
        model, result.structure, cfg, out_dir, name=name, overwrite=args.overwrite,
        summary=dict(flops_ratio=summary['flops_ratio'], params_ratio=summary['params_ratio'],
                     options=result.options))
    summary.update(pruned_config=cfg_path, pruned_checkpoint=ckpt_path,
                   classes=(dataset_meta(cfg, model) or {}).get('classes'))
    if is_pruned_config(cfg):  # saved on the dense parent, with the structures composed
        summary['relative_to'] = 'the pruned model the config builds (FLOPs and params ratios)'
    atomic_write(summary_path,
                 lambda p: open(p, 'w').write(json.dumps(summary, indent=2, default=str)),
                 overwrite=True)
    shape = 'x'.join(str(s) for s in result.options['input_shape'])
    print(f'\n{"":10s}{"dense":>14s}{"pruned":>14s}{"ratio":>9s}')
    print(f'{"params":10s}{result.params[0] / 1e6:>13.2f}M{result.params[1] / 1e6:>13.2f}M'
          f'{result.params_ratio:>9.1%}')
    print(f'{"FLOPs":10s}{result.flops[0] / 1e9:>13.2f}G{result.flops[1] / 1e9:>13.2f}G'
          f'{result.flops_ratio:>9.1%}   (MACs at {shape}, per image, mmprune.flops)')
    if result.latency:
        before, after = result.latency
        print(f'{"latency":10s}{before:>12.1f}ms{after:>12.1f}ms{after / before:>9.1%}   '
              f'(measured interleaved, this machine)')
    if result.removed_blocks:
        print(f'\nremoved blocks ({len(result.removed_blocks)}): '
              f'{", ".join(result.removed_blocks)}')
    print(f'\npruned in {t2 - t1:.1f}s; kept output layers: {", ".join(result.output_layers)}')
    print(f'config:     {cfg_path}\ncheckpoint: {ckpt_path}')
    return summary


if __name__ == '__main__':
    main()
