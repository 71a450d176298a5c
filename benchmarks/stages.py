"""Where the time goes: each part of a model, dense vs pruned, time against FLOPs.

    python benchmarks/stages.py [MODEL] [--target 0.5] [--allocation uniform|latency]
                                [--round-to 8] [--depth 2] [--shape 512 512] [--rounds 3]
                                [--ops N] [--fused-attention] [--malloc steady|default]
                                [--out FILE.json]

MODEL: a name from ``benchmarks/speed.py`` (default ``faster_rcnn_r50``) or a
config path. The model (random init) is pruned with
``mmprune.prune(target_flops=...)``; then each layer of the dense and of the
pruned model is timed in the tensor-mode forward by
``mmprune.latency.layer_times`` (a weightless module's time, ReLU or pooling,
goes to the layer whose output it reads; fastest of ``--rounds`` x 2 runs) and
its MACs counted by ``mmprune.flops``. Layers are summed by the first
``--depth`` parts of their names (``backbone.layer1``). Per part: time and
FLOPs dense and pruned, and "ms over FLOPs": the pruned time less the time
the part would take if it shrank with its FLOPs (positive: the part keeps
more time than FLOPs). The whole forward is timed too (median of 5); its
time outside the layers is the functional work between modules (resizes,
reshapes, attention products written as functions, post-processing), less
exactly: the layer times carry the hooks' overhead. ``--ops N`` adds the N
slowest operators of ``torch.profiler`` over 3 forwards of each model (calls and
self CPU ms per forward), which shows whether pruning left extra operators
(reshapes, copies) behind, and counts the hooks left on the pruned model.
``--fused-attention`` times both models with every ``nn.MultiheadAttention``
asked for no attention weights (``need_weights=False``), so that PyTorch runs
its fused ``scaled_dot_product_attention`` instead of materialising the
attention matrix: mmcv's and mmseg's attention wrappers ask for the weights
and drop them. The prune itself runs as without it (same structure).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import (MODELS, add_run_options, apply_malloc, fused_attention,  # noqa: E402
                   write_results)


def profile(model, batch, rounds: int):
    """(ms per layer, MACs per layer, ms of the whole forward)."""
    import torch

    from mmprune.flops import layer_flops, record_shapes
    from mmprune.tracing import inference_forward
    from mmprune.latency import layer_times
    best: dict = {}
    for _ in range(rounds):
        own, after = layer_times(model, batch, runs=2, forward=inference_forward)
        for k in set(own) | set(after):
            t = own.get(k, 0.0) + after.get(k, 0.0)
            best[k] = min(best.get(k, t), t)
    flops = layer_flops(model, record_shapes(model, batch, inference_forward))
    whole = []
    with torch.no_grad():
        for _ in range(5):
            t0 = time.perf_counter()
            inference_forward(model, batch)
            whole.append(time.perf_counter() - t0)
    return ({k: v * 1e3 for k, v in best.items()}, flops, statistics.median(whole) * 1e3)


def operators(model, batch) -> dict:
    """{operator: (calls, self CPU ms) per forward}, from ``torch.profiler``."""
    import torch
    from torch.profiler import profile as torch_profile

    from mmprune.tracing import inference_forward
    with torch.no_grad():
        inference_forward(model, batch)
        with torch_profile() as prof:
            for _ in range(3):
                inference_forward(model, batch)
    return {e.key: (e.count // 3, e.self_cpu_time_total / 3e3) for e in prof.key_averages()}


def ops_table(dense: dict, pruned: dict, top: int) -> list:
    keys = sorted(set(dense) | set(pruned), key=lambda k: -dense.get(k, (0, 0.0))[1])[:top]
    rows = []
    for k in keys:
        (n0, t0), (n1, t1) = dense.get(k, (0, 0.0)), pruned.get(k, (0, 0.0))
        rows.append(dict(op=k, dense_calls=n0, dense_ms=round(t0, 2), pruned_calls=n1,
                         pruned_ms=round(t1, 2)))
    return rows


def parts(dense, pruned, depth: int) -> list:
    """Rows per name prefix, the slowest dense part first."""
    (td, fd, _), (tp, fp, _) = dense, pruned
    sums: dict = {}
    for name in set(td) | set(fd) | set(tp) | set(fp):
        key = '.'.join(name.split('.')[:depth])
        row = sums.setdefault(key, [0.0, 0.0, 0, 0])
        row[0] += td.get(name, 0.0)
        row[1] += tp.get(name, 0.0)
        row[2] += fd.get(name, 0)
        row[3] += fp.get(name, 0)
    rows = []
    for key, (t0, t1, f0, f1) in sums.items():
        frac = f1 / f0 if f0 else 1.0
        rows.append(dict(part=key, dense_ms=round(t0, 2), pruned_ms=round(t1, 2),
                         dense_gmacs=round(f0 / 1e9, 3), flops_ratio=round(frac, 3),
                         time_ratio=round(t1 / t0, 3) if t0 else None,
                         ms_over_flops=round(t1 - t0 * frac, 2)))
    return sorted(rows, key=lambda r: -r['dense_ms'])


def table(name: str, flops_ratio: float, dense, pruned, rows: list, top: int) -> str:
    lines = [f'{name}: whole forward {dense[2]:.1f} -> {pruned[2]:.1f} ms '
             f'(speed-up {dense[2] / pruned[2]:.2f}x, FLOPs {100 * flops_ratio:.1f}%, '
             f'efficiency {dense[2] / pruned[2] * flops_ratio:.2f}); in the layers '
             f'{sum(dense[0].values()):.1f} -> {sum(pruned[0].values()):.1f} ms',
             '| part | dense ms | pruned ms | time ratio | dense GMACs | FLOPs ratio '
             '| ms over FLOPs |', '|---|---|---|---|---|---|---|']
    for r in rows[:top]:
        ratio = '-' if r['time_ratio'] is None else f'{r["time_ratio"]:.2f}'
        lines.append(f'| {r["part"]} | {r["dense_ms"]:.1f} | {r["pruned_ms"]:.1f} | {ratio} | '
                     f'{r["dense_gmacs"]:.2f} | {r["flops_ratio"]:.2f} | '
                     f'{r["ms_over_flops"]:.1f} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('model', nargs='?', default='faster_rcnn_r50',
                   help=f'a name from {list(MODELS)} or a config path')
    p.add_argument('--target', type=float, default=0.5, help='target_flops of the prune')
    p.add_argument('--allocation', choices=['uniform', 'latency'], default='uniform')
    p.add_argument('--round-to', type=int, default=8, help='round_to of the prune')
    p.add_argument('--depth', type=int, default=2, help='name parts a row sums over')
    p.add_argument('--shape', type=int, nargs=2, default=(512, 512))
    p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--top', type=int, default=30, help='rows printed (all go to the JSON)')
    p.add_argument('--ops', type=int, default=0, metavar='N',
                   help='also the N slowest profiler operators, dense vs pruned')
    p.add_argument('--fused-attention', action='store_true',
                   help='time both models with nn.MultiheadAttention(need_weights=False): '
                        "PyTorch's fused attention kernel (the prune runs without it)")
    add_run_options(p, 'stages')
    args = p.parse_args(argv)
    apply_malloc(args)
    import torch

    import mmprune
    from mmprune.tracing import make_batch
    name = args.model if args.model in MODELS else \
        os.path.splitext(os.path.basename(args.model))[0]
    torch.manual_seed(0)
    dense, cfg = mmprune.build_model(MODELS.get(args.model, args.model))
    dense.eval()
    batch = make_batch(dense, cfg, tuple(args.shape))
    pruned = copy.deepcopy(dense)
    res = mmprune.prune(pruned, cfg=cfg, target_flops=args.target, input_shape=tuple(args.shape),
                        allocation=args.allocation, round_to=args.round_to)
    pruned.eval()
    with fused_attention() if args.fused_attention else contextlib.nullcontext():
        a, b = profile(dense, batch, args.rounds), profile(pruned, batch, args.rounds)
        ops = (operators(dense, batch), operators(pruned, batch)) if args.ops else None
    rows = parts(a, b, args.depth)
    flops_ratio = res.flops[1] / res.flops[0]  # of the timed (inference) forward
    record = dict(model=name, flops_ratio=flops_ratio, dense_ms=a[2], pruned_ms=b[2],
                  dense_layers_ms=sum(a[0].values()), pruned_layers_ms=sum(b[0].values()),
                  parts=rows)
    text = table(name, flops_ratio, a, b, rows, args.top)
    if ops:
        record['hooks_left'] = sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
                                   for m in pruned.modules())
        record['ops'] = ops_table(*ops, args.ops)
        text += (f'\n\nhooks left on the pruned model: {record["hooks_left"]}\n'
                 '| operator | dense calls | dense ms | pruned calls | pruned ms |\n'
                 '|---|---|---|---|---|\n'
                 + '\n'.join(f'| {o["op"]} | {o["dense_calls"]} | {o["dense_ms"]:.1f} | '
                              f'{o["pruned_calls"]} | {o["pruned_ms"]:.1f} |'
                              for o in record['ops']))
    write_results(args, text, [record])
    return 0


if __name__ == '__main__':
    sys.exit(main())
