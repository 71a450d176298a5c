"""Evaluate models side by side: the host's metric, size, FLOPs and latency.

What ``mmprune test``, ``mmprune sweep`` and ``mmprune train``'s closing table
share. The metric is the config's own ``test_evaluator`` (VOC or COCO mAP for
mmdet, ``IoUMetric`` for mmseg) computed by the host Runner's ``test()``,
exactly as the host's packaged ``tools/test.py`` computes it; FLOPs are
torch-pruning's MAC count of the inference forward at the test pipeline's size
(:class:`mmprune.flops.FlopsCounter`, the count ``prune()`` reports); latency is
the median time of that forward at batch 1 (:mod:`mmprune.timing`), optional.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
import time
from typing import List, Optional

import torch

from .apis import build_model, load_config
from .checkpoint import atomic_write
from .tracing import make_batch
from .timing import device_sync, forward_ms, interleaved_ms, steady_malloc

#: the metric a table leads with, first found wins
METRIC_KEYS = ('pascal_voc/mAP', 'coco/bbox_mAP', 'coco/segm_mAP', 'mIoU', 'aAcc')


def main_metric(metrics: dict) -> str:
    """The headline key of a host metrics dict (mAP for mmdet, mIoU for mmseg)."""
    for key in METRIC_KEYS:
        if key in metrics:
            return key
    return next(iter(metrics), '')


def _load(config: str, cfg_options: Optional[dict]):
    cfg = load_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def evaluate(config: str, checkpoint: str, work_dir: str, tag: str,
             cfg_options: Optional[dict] = None, latency_runs: int = 10) -> dict:
    """Metric through the host Runner, plus params, FLOPs, latency and file size,
    for one model. ``latency_runs=0`` skips the timing (the latency fields are None)."""
    from mmengine.runner import Runner

    from .flops import FlopsCounter
    cfg = _load(config, cfg_options)
    # a clear error when the checkpoint does not fit the config (the Runner only warns)
    model, _ = build_model(copy.deepcopy(cfg), checkpoint)
    batch = make_batch(model, cfg)
    model.eval()
    counter = FlopsCounter(model, batch)  # .forward: what it counted, and what is timed
    flops, params = counter.dense, sum(p.numel() for p in model.parameters())
    cpu = forward_ms(model, batch, latency_runs, 'cpu', counter.forward)
    gpu = forward_ms(model, batch, latency_runs, 'cuda', counter.forward) \
        if torch.cuda.is_available() else None
    cfg.load_from = checkpoint
    cfg.work_dir = osp.join(work_dir, tag)
    cfg.experiment_name = f'test_{tag}_{int(time.time() * 1000)}'
    cfg.launcher = 'none'
    metrics = Runner.from_cfg(cfg).test()
    return dict(config=config, checkpoint=checkpoint,
                metrics={k: float(v) for k, v in metrics.items()},
                params=params, flops=flops, forward=counter.forward.__name__,
                input_shape=list(batch['inputs'].shape[-2:]),
                cpu_latency_ms=None if cpu is None else round(cpu, 2),
                gpu_latency_ms=None if gpu is None else round(gpu, 3),
                size_mb=round(os.path.getsize(checkpoint) / 2 ** 20, 2))


def side_by_side_latency(rows: List[dict], cfg_options: Optional[dict] = None,
                         runs: int = 10) -> None:
    """Re-time the rows' models interleaved (one input, same process, glibc malloc
    reusing its pages): large tensors would otherwise pay fresh page faults on some
    models and not on others. Updates each row's latency fields in place; does
    nothing when ``runs <= 0``."""
    if runs <= 0:
        return
    from . import tracing
    steady_malloc()
    models = {r['tag']: build_model(_load(r['config'], cfg_options), r['checkpoint'])[0].eval()
              for r in rows}
    first = next(iter(models.values()))
    batch = make_batch(first, first.cfg)
    # each model's counted forward (evaluate() recorded which)
    fwd = {r['tag']: getattr(tracing, r.get('forward', 'inference_forward')) for r in rows}
    devices = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    for device in devices:
        b = dict(inputs=batch['inputs'].to(device), data_samples=batch['data_samples'])
        with torch.no_grad():
            ms = interleaved_ms({t: (lambda m=m.to(device), f=fwd[t]: f(m, b))
                                 for t, m in models.items()}, runs, device_sync(device))
        field, digits = ('gpu_latency_ms', 3) if device == 'cuda' else ('cpu_latency_ms', 2)
        for r in rows:
            r[field] = round(ms[r['tag']], digits)
    for m in models.values():
        m.to('cpu')


def format_ms(value: Optional[float]) -> str:
    """A latency for a table: two decimals, or ``-`` when it was not timed."""
    return '-' if value is None else f'{value:.2f}'


def table(rows: List[dict]) -> str:
    """Fixed-width table of ``evaluate()`` rows; deltas against the last row."""
    key = main_metric(rows[0]['metrics'])
    base = rows[-1]
    head = f'{"model":10s}{key:>16s}{"delta":>9s}{"params":>11s}{"FLOPs":>11s}' \
           f'{"CPU ms":>9s}{"GPU ms":>9s}{"size MB":>9s}'
    lines = [head, '-' * len(head)]
    for r in rows:
        value = r['metrics'].get(key, float('nan'))
        delta = value - base['metrics'].get(key, float('nan'))
        lines.append(f'{r["tag"]:10s}{value:>16.4f}{delta:>+9.4f}{r["params"] / 1e6:>10.3f}M'
                     f'{r["flops"] / 1e9:>10.4f}G{format_ms(r["cpu_latency_ms"]):>9s}'
                     f'{format_ms(r["gpu_latency_ms"]):>9s}{r["size_mb"]:>9.2f}')
    shape = 'x'.join(map(str, rows[0]['input_shape']))
    how = ', models interleaved' if len(rows) > 1 else ''
    timed = f'latency: median inference forward, batch 1{how}' \
        if rows[0]['cpu_latency_ms'] is not None else 'latency not timed (--latency-runs 0)'
    lines.append(f'(FLOPs: MACs at {shape}, per image, mmprune.flops; {timed}; '
                 f'delta vs {base["tag"]})')
    return '\n'.join(lines)


def _speedup(dense_ms: Optional[float], ms: Optional[float]) -> str:
    return '-' if dense_ms is None or ms is None else f'{dense_ms / ms:.2f}x'


def sizes_table(rows: List[dict], note: str, latency_runs: int) -> str:
    """Markdown table of model sizes (``rows[0]`` is the dense model): metric and
    delta, params, FLOPs and their ratio, CPU latency and speed-up, then ``note``."""
    key = main_metric(rows[0]['metrics'])
    dense = rows[0]
    lines = [f'| size | {key} | delta | params (M) | FLOPs (G) | FLOPs ratio | CPU ms | speed-up |',
             '|---|---|---|---|---|---|---|---|']
    for r in rows:
        v = r['metrics'].get(key, float('nan'))
        delta = v - dense['metrics'].get(key, float('nan'))
        lines.append(f"| {r['size']} | {v:.4f} | {delta:+.4f} "
                     f"| {r['params'] / 1e6:.3f} | {r['flops'] / 1e9:.4f} | "
                     f"{r['flops'] / dense['flops']:.1%} | {format_ms(r['cpu_latency_ms'])} | "
                     f"{_speedup(dense['cpu_latency_ms'], r['cpu_latency_ms'])} |")
    shape = 'x'.join(map(str, dense['input_shape']))
    timed = (f'CPU latency = median inference forward, batch 1, all sizes interleaved in one '
             f'process ({latency_runs} runs)') if latency_runs > 0 else 'latency not timed'
    lines.append(f'\n{note}; FLOPs = MACs at {shape}; {timed}.')
    return '\n'.join(lines)


def plot_sizes(rows: List[dict], key: str, path: str) -> None:
    """PNG of the metric against FLOPs (and against CPU latency when timed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fields = [('flops', 'GFLOPs (MACs)')]
    if all(r.get('cpu_latency_ms') is not None for r in rows):
        fields.append(('cpu_latency_ms', 'CPU latency (ms)'))
    fig, axes = plt.subplots(1, len(fields), figsize=(5 * len(fields), 4), squeeze=False)
    for ax, (field, label) in zip(axes[0], fields):
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


def write_sizes(rows: List[dict], work_dir: str, stem: str, latency_runs: int, note: str,
                **extra) -> dict:
    """Print :func:`sizes_table` and write it (``<stem>.md``), the rows (``<stem>.json``,
    with ``extra``) and :func:`plot_sizes` (``<stem>.png``) into ``work_dir``."""
    key = main_metric(rows[0]['metrics'])
    text = sizes_table(rows, note, latency_runs)
    print('\n' + text)
    os.makedirs(work_dir, exist_ok=True)
    atomic_write(osp.join(work_dir, f'{stem}.md'), lambda p: open(p, 'w').write(text + '\n'),
                 overwrite=True)
    atomic_write(osp.join(work_dir, f'{stem}.json'),
                 lambda p: json.dump(dict(rows=rows, metric=key, **extra), open(p, 'w'), indent=1),
                 overwrite=True)
    plot_sizes(rows, key, osp.join(work_dir, f'{stem}.png'))
    return dict(rows=rows, metric=key, table=text)
