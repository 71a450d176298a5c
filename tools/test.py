"""Evaluate a dense or pruned model (mAP / mIoU), optionally side by side with another.

    python tools/test.py CONFIG CHECKPOINT [--compare DENSE_CONFIG DENSE_CHECKPOINT]
        [--work-dir DIR] [--cfg-options ...] [--latency-runs 10]

The metric is the config's own ``test_evaluator`` (VOC or COCO mAP for mmdet,
``IoUMetric`` for mmseg), computed by the host Runner's ``test()``, exactly as
the host's packaged ``tools/test.py`` computes it. With ``--compare`` one
table shows, per model: the metric and its delta, params, FLOPs (MACs of the
inference forward at the test pipeline's size, torch-pruning's counter; see
``mmprune.graph.inference_forward``; the traced graph where the host's tensor
mode fails on the model, as ``prune()`` counts), median CPU latency of that
forward (and GPU latency when a GPU is present; glibc malloc set to reuse its
pages first, ``mmprune.latency.steady_malloc``, as in the benchmarks), and the
checkpoint's size on disk. A JSON summary goes to the work dir.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from mmprune.apis import build_model, load_config  # noqa: E402
from mmprune.checkpoint import atomic_write  # noqa: E402
import mmprune.graph  # noqa: E402
from mmprune.graph import inference_forward, make_batch  # noqa: E402
from mmprune.latency import steady_malloc  # noqa: E402


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--compare', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                   help='a second model (usually the dense one) for the side-by-side table')
    p.add_argument('--work-dir', help='where logs and the JSON summary go')
    p.add_argument('--latency-runs', type=int, default=10, help='timed runs (median)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of both configs, as in the host tools')
    return p.parse_args(argv)


def median_ms(fn, runs: int, sync=None) -> float:
    """Median wall time of ``fn()`` in ms over ``runs`` calls, after two warm-up calls."""
    return interleaved_ms({'fn': fn}, runs, sync)['fn']


def interleaved_ms(fns: dict, runs: int, sync=None) -> dict:
    """Median ms per callable, timing run k of each before run k+1 of any (order
    rotated, two warm-up rounds), so that load on the machine hits all alike."""
    names = list(fns)
    times = {n: [] for n in names}
    for i in range(runs + 2):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            if sync:
                sync()
            t0 = time.perf_counter()
            fns[n]()
            if sync:
                sync()
            if i >= 2:
                times[n].append((time.perf_counter() - t0) * 1000)
    return {n: statistics.median(v) for n, v in times.items()}


def side_by_side_latency(rows: list, args) -> None:
    """Re-time the compared models' forwards interleaved (one input, same process),
    with glibc malloc reusing its pages (:func:`steady_malloc`): large tensors would
    otherwise pay fresh page faults on some models and not on others."""
    steady_malloc()
    models = {}
    for r in rows:
        cfg = load_config(r['config'])
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        models[r['tag']] = build_model(cfg, r['checkpoint'])[0].eval()
    first = next(iter(models.values()))
    batch = make_batch(first, first.cfg)
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    # each model's counted forward (evaluate() recorded which)
    fwd = {r['tag']: getattr(mmprune.graph, r.get('forward', 'inference_forward')) for r in rows}
    for device in devices:
        b = dict(inputs=batch['inputs'].to(device), data_samples=batch['data_samples'])
        with torch.no_grad():
            ms = interleaved_ms({t: (lambda m=m.to(device), f=fwd[t]: f(m, b))
                                 for t, m in models.items()}, args.latency_runs,
                                torch.cuda.synchronize if device == 'cuda' else None)
        for r in rows:
            r[f'{"gpu" if device == "cuda" else "cpu"}_latency_ms'] = round(ms[r['tag']],
                                                                          2 if device == 'cpu'
                                                                          else 3)
    for m in models.values():
        m.to('cpu')


def latency_ms(model, batch, runs: int, device: str = 'cpu',
               forward=inference_forward) -> float:
    """Median wall time of ``forward`` (the inference forward) at batch 1 on
    ``device`` (glibc malloc reusing its pages, as in :func:`side_by_side_latency`)."""
    steady_malloc()
    model = model.to(device).eval()
    batch = dict(inputs=batch['inputs'].to(device), data_samples=batch['data_samples'])
    with torch.no_grad():
        ms = median_ms(lambda: forward(model, batch), runs,
                       torch.cuda.synchronize if device != 'cpu' else None)
    model.to('cpu')
    return ms


def evaluate(config: str, checkpoint: str, args, tag: str) -> dict:
    """Metric through the host Runner, plus size and speed, for one model."""
    from mmengine.runner import Runner
    cfg = load_config(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    # a clear error when the checkpoint does not fit the config (the Runner only warns)
    model, _ = build_model(copy.deepcopy(cfg), checkpoint)
    from mmprune.flops import FlopsCounter
    batch = make_batch(model, cfg)
    model.eval()
    counter = FlopsCounter(model, batch)  # .forward: what it counted, and what is timed
    flops, params = counter.dense, sum(p.numel() for p in model.parameters())
    cpu = latency_ms(model, batch, args.latency_runs, forward=counter.forward)
    gpu = latency_ms(model, batch, args.latency_runs, 'cuda', counter.forward) \
        if torch.cuda.is_available() else None
    cfg.load_from = checkpoint
    cfg.work_dir = osp.join(args.work_dir, tag)
    cfg.experiment_name = f'test_{tag}_{int(time.time() * 1000)}'
    cfg.launcher = 'none'
    metrics = Runner.from_cfg(cfg).test()
    return dict(config=config, checkpoint=checkpoint, metrics={k: float(v) for k, v in metrics.items()},
                params=params, flops=flops, forward=counter.forward.__name__,
                input_shape=list(batch['inputs'].shape[-2:]),
                cpu_latency_ms=round(cpu, 2), gpu_latency_ms=None if gpu is None else round(gpu, 3),
                size_mb=round(os.path.getsize(checkpoint) / 2 ** 20, 2))


def main_metric(metrics: dict) -> str:
    for key in ('pascal_voc/mAP', 'coco/bbox_mAP', 'coco/segm_mAP', 'mIoU', 'aAcc'):
        if key in metrics:
            return key
    return next(iter(metrics), '')


def table(rows: list) -> str:
    key = main_metric(rows[0]['metrics'])
    base = rows[-1]
    head = f'{"model":10s}{key:>16s}{"delta":>9s}{"params":>11s}{"FLOPs":>11s}' \
           f'{"CPU ms":>9s}{"GPU ms":>9s}{"size MB":>9s}'
    lines = [head, '-' * len(head)]
    for r in rows:
        value = r['metrics'].get(key, float('nan'))
        delta = value - base['metrics'].get(key, float('nan'))
        gpu = f'{r["gpu_latency_ms"]:.2f}' if r['gpu_latency_ms'] is not None else '-'
        lines.append(f'{r["tag"]:10s}{value:>16.4f}{delta:>+9.4f}{r["params"] / 1e6:>10.3f}M'
                     f'{r["flops"] / 1e9:>10.4f}G{r["cpu_latency_ms"]:>9.2f}{gpu:>9s}'
                     f'{r["size_mb"]:>9.2f}')
    shape = 'x'.join(map(str, rows[0]['input_shape']))
    how = ', models interleaved' if len(rows) > 1 else ''
    lines.append(f'(FLOPs: MACs at {shape}, per image, mmprune.flops; latency: median inference '
                 f'forward, batch 1{how}; delta vs {base["tag"]})')
    return '\n'.join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = osp.splitext(osp.basename(args.config))[0]
    args.work_dir = args.work_dir or osp.join('work_dirs', f'test_{name}')
    rows = [dict(tag='model', **evaluate(args.config, args.checkpoint, args, 'model'))]
    if args.compare:
        rows[0]['tag'] = 'pruned'
        rows.append(dict(tag='dense', **evaluate(*args.compare, args, 'dense')))
        side_by_side_latency(rows, args)
    text = table(rows)
    print('\n' + text)
    summary = dict(rows=rows, table=text)
    os.makedirs(args.work_dir, exist_ok=True)
    atomic_write(osp.join(args.work_dir, 'test_summary.json'),
                 lambda p: json.dump(summary, open(p, 'w'), indent=1), overwrite=True)
    return summary


if __name__ == '__main__':
    main()
