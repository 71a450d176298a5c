"""Time the models of finished ``prune_train.py`` runs again, together, in one quiet process.

    python benchmarks/runs_speed.py WORK_DIR [WORK_DIR ...] [--runs 20] [--malloc steady]
                                    [--out benchmarks/results/runs_speed_DATE.json]

Each work dir's ``prune_train_summary.json`` names the pruned config and checkpoint, its
dense parent and the input size of its closing table. The closing table of each run
timed its two models inside the training process, at the end of a run, beside its
dataloader workers; runs compared at "the same speed-up" need their models timed under
the same conditions. Here the pruned models of every run that shares a dense parent are
timed in one interleaved round with that parent (:func:`mmprune.timing.interleaved_ms`,
the inference forward at batch 1, eager PyTorch on this CPU), and each row gives its
speed-up over the parent with the run's metric and FLOPs from its summary.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import add_run_options, apply_malloc, write_results  # noqa: E402


def read_run(work_dir: str) -> dict:
    with open(os.path.join(work_dir, 'prune_train_summary.json')) as f:
        summary = json.load(f)
    entries = {c['tag']: c for c in summary.get('compare', [])}
    if not {'pruned', 'dense'} <= set(entries):
        raise SystemExit(f'{work_dir}: its summary has no pruned/dense comparison (was the '
                         f'run started with --no-compare?)')
    metrics = summary.get('metrics') or {'-': None}
    metric = next((k for k in metrics if k.endswith(('mAP', 'mIoU'))), next(iter(metrics)))
    return dict(work_dir=work_dir, pruned=entries['pruned'], dense=entries['dense'],
                flops_ratio=summary['flops_ratio'], params_ratio=summary['params_ratio'],
                metric=metric, value=(summary.get('metrics') or {}).get(metric))


def time_group(dense: dict, runs: list, n: int) -> dict:
    """Every pruned model of ``runs`` and their dense parent in one interleaved round."""
    import torch

    import mmprune
    from mmprune.timing import interleaved_ms
    from mmprune.tracing import inference_forward, make_batch
    model, cfg = mmprune.build_model(dense['config'], dense['checkpoint'])
    batch = make_batch(model, cfg, tuple(dense['input_shape']))
    models = {'dense': model.eval()}
    for run in runs:
        p = run['pruned']
        models[run['work_dir']] = mmprune.load_pruned(p['config'], p['checkpoint']).eval()
    with torch.no_grad():
        return interleaved_ms({k: (lambda m=m: inference_forward(m, batch))
                               for k, m in models.items()}, n)


def table(rows: list) -> str:
    lines = ['| run | metric | FLOPs | params | CPU ms (dense) | speed-up |',
             '|---|---|---|---|---|---|']
    for r in rows:
        value = '-' if r['value'] is None else f'{r["value"]:.4g}'
        lines.append(f'| {os.path.basename(r["work_dir"].rstrip("/"))} | {value} | '
                     f'{r["flops_ratio"]:.1%} | {r["params_ratio"]:.1%} | '
                     f'{r["ms"]:.1f} ({r["dense_ms"]:.1f}) | {r["speedup"]:.2f}x |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dirs', nargs='+')
    p.add_argument('--runs', type=int, default=20)
    add_run_options(p, 'runs_speed')
    args = p.parse_args(argv)
    apply_malloc(args)
    runs = [read_run(d) for d in args.work_dirs]
    groups: dict = {}
    for run in runs:
        d = run['dense']
        # each run writes its own copy of the dense config: one parent is one checkpoint
        groups.setdefault((os.path.abspath(d['checkpoint']), tuple(d['input_shape'])),
                          []).append(run)
    for group in groups.values():
        ms = time_group(group[0]['dense'], group, args.runs)
        for run in group:
            run.update(ms=ms[run['work_dir']], dense_ms=ms['dense'],
                       speedup=ms['dense'] / ms[run['work_dir']])
        print(f'{len(group)} runs of {group[0]["dense"]["config"]}: timed', flush=True)
    rows = [dict(work_dir=r['work_dir'], metric=r['metric'], value=r['value'],
                 flops_ratio=r['flops_ratio'], params_ratio=r['params_ratio'],
                 ms=round(r['ms'], 2), dense_ms=round(r['dense_ms'], 2),
                 speedup=round(r['speedup'], 3)) for r in runs]
    write_results(args, table(rows), rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
