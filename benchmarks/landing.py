"""Where a ``target_latency`` prune lands: the search's own reading against later re-timings.

    python benchmarks/landing.py CONFIG [--checkpoint CKPT] [--shape 288 384]
                                 [--targets 0.667 0.5] [--seeds 0] [--repeats 3] [--runs 40]
                                 [--device cpu] [--malloc steady]
                                 [--out benchmarks/results/landing_DATE.json]

For each target and seed, ``mmprune.prune(target_latency=t, remove_blocks=0)`` prunes the
width of a copy of the model (blocks off, so that one search lands, not a walk of blocks)
(``seed`` seeds the example batch; a checkpoint gives trained weights, whose channel
ranking differs from random init); then the dense model and the result are timed
``--repeats`` times more in the same process, ``--runs`` interleaved rounds each, and each
re-timing is the median per-round ratio (the estimator the search uses, over all rounds).
A row says whether the search's reading and each re-timing are within the 5 % the search
promises (:data:`mmprune.search.LATENCY_TOLERANCE`). The spread of the re-timings of one
fixed pair of models is the timer's own noise on the machine: a search cannot land closer
than that.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import add_run_options, apply_malloc, write_results  # noqa: E402


def retime(dense, model, batch, runs: int, sync=None) -> dict:
    """``model`` against ``dense``, ``runs`` interleaved rounds: the median per-round
    ratio (what ``target_latency`` measures, over all rounds) and both medians in ms."""
    import torch

    from mmprune.timing import interleaved_runs
    from mmprune.tracing import inference_forward
    with torch.no_grad():
        t = interleaved_runs({'dense': lambda: inference_forward(dense, batch),
                              'pruned': lambda: inference_forward(model, batch)}, runs, sync)
    return dict(ratio=round(statistics.median(p / d for p, d in zip(t['pruned'], t['dense'])), 4),
                dense_ms=round(statistics.median(t['dense']), 2),
                pruned_ms=round(statistics.median(t['pruned']), 2))


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG, ``--checkpoint`` and ``--shape``, as this script and threads.py take them."""
    p.add_argument('config')
    p.add_argument('--checkpoint')
    p.add_argument('--shape', type=int, nargs=2, default=(288, 384))


def land(config: str, checkpoint, shape, target: float, seed: int, repeats: int, runs: int,
         device: str) -> dict:
    import mmprune
    from mmprune.search import LATENCY_TOLERANCE
    from mmprune.timing import device_sync
    from mmprune.tracing import make_batch
    model, cfg = mmprune.build_model(config, checkpoint)
    model.to(device)
    dense = copy.deepcopy(model).eval()
    t0 = time.time()
    result = mmprune.prune(model, cfg=cfg, input_shape=shape, target_latency=target,
                           remove_blocks=0, seed=seed)
    search_s = time.time() - t0
    model.eval()
    batch = make_batch(dense, cfg, shape)
    retimed = [retime(dense, model, batch, runs, device_sync(device)) for _ in range(repeats)]
    within = [abs(r['ratio'] - target) <= LATENCY_TOLERANCE * target for r in retimed]
    return dict(target=target, seed=seed, search=result.options.get('latency_ratio'),
                pruning_ratio=result.options.get('pruning_ratio'),
                flops=round(result.flops[1] / result.flops[0], 4), search_s=round(search_s),
                retimed=retimed, within=sum(within))


def table(records: list) -> str:
    lines = ['| target | seed | search read | re-timed (each) | within 5 % | FLOPs | dense ms |',
             '|---|---|---|---|---|---|---|']
    for r in records:
        each = ', '.join(f'{x["ratio"]:.3f}' for x in r['retimed'])
        ms = ', '.join(f'{x["dense_ms"]:.1f}' for x in r['retimed'])
        lines.append(f'| {r["target"]:.3f} | {r["seed"]} | {r["search"]:.3f} | {each} | '
                     f'{r["within"]}/{len(r["retimed"])} | {r["flops"]:.1%} | {ms} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_arguments(p)
    p.add_argument('--targets', type=float, nargs='+', default=[0.667, 0.5])
    p.add_argument('--seeds', type=int, nargs='+', default=[0])
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--runs', type=int, default=40)
    p.add_argument('--device', default='cpu')
    add_run_options(p, 'landing')
    args = p.parse_args(argv)
    apply_malloc(args)
    records = []
    for target in args.targets:
        for seed in args.seeds:
            records.append(land(args.config, args.checkpoint, tuple(args.shape), target, seed,
                                args.repeats, args.runs, args.device))
            r = records[-1]
            print(f'target {target}: search {r["search"]}, re-timed '
                  f'{[x["ratio"] for x in r["retimed"]]}', flush=True)
    write_results(args, table(records), records)
    return 0


if __name__ == '__main__':
    sys.exit(main())
