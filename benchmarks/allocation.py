"""Allocation across layers: at the same FLOPs, does pruning some layers more run faster?

    python benchmarks/allocation.py [--models faster_rcnn_r50 ...] [--target 0.5]
                                    [--reps 4] [--runs 6] [--shape 512 512]
                                    [--first-stage-ratio 0.7] [--first-stage NAME ...]
                                    [--malloc steady|default] [--out FILE.json]

Each model (random init; speed does not depend on the weights) is pruned to
``--target`` of its dense FLOPs with ``mmprune.prune(target_flops=t)`` four
ways, all with the library defaults otherwise (``group_l2``, ``round_to=8``):

* ``uniform``: one ratio for every group (the default ``allocation``);
* ``latency``: ``allocation='latency'``: each group at the common ratio times
  its measured time per FLOP in the dense model relative to the model's
  (``mmprune.latency``);
* ``first stage``: the stem and the first stage (the highest-resolution layers:
  ``backbone.conv1`` / ``backbone.stem`` and ``backbone.layer1``; other names
  with ``--first-stage``) at ``--first-stage-ratio`` (``pruning_ratio_dict``),
  the rest at the ratio ``target_flops`` searches;
* ``first stage + latency``: both.

The dense model and the pruned ones are timed interleaved in eager
PyTorch on CPU (``mmprune.timing.interleaved_ms``: run k of each before
run k+1 of any, two warm-ups, medians), ``--reps`` rounds of ``--runs`` runs,
with glibc malloc made to reuse its pages (``--malloc``, see ``speed.steady_malloc``).
Efficiency = speed-up x FLOPs fraction, per round and its mean over rounds.

``--allocations`` picks some of the four; ``--round-tos 8 16`` prunes each of them
with every ``round_to`` (keys ``uniform rt16`` etc. for the ones after the first);
``--seeds 0 1 2`` repeats each model over random inits (``torch.manual_seed``
before building it): where a ``target_flops`` prune lands, and so its channel
counts, depends on the importance scores, i.e. on the weights.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import (MODELS, add_run_options, apply_malloc,  # noqa: E402  (benchmarks/speed.py)
                   write_results)
from mmprune.timing import interleaved_ms  # noqa: E402

FIRST_STAGE = ('backbone.conv1', 'backbone.stem', 'backbone.layer1')
VARIANTS = ('uniform', 'latency', 'first stage', 'first stage + latency')


def bench(name: str, config: str, args, seed: int = 0) -> dict:
    import torch

    import mmprune
    from mmprune.tracing import inference_forward, make_batch
    torch.manual_seed(seed)
    dense, cfg = mmprune.build_model(config)
    dense.eval()
    shape = tuple(args.shape)
    batch = make_batch(dense, cfg, shape)
    variants, fracs, info = {'dense': dense}, {'dense': 1.0}, {}

    def add(key, model, res, t0):
        model.eval()  # res.flops: of the timed (inference) forward
        variants[key], fracs[key] = model, res.flops[1] / res.flops[0]
        info[key] = dict(flops_ratio=fracs[key], prune_s=round(time.perf_counter() - t0, 1))

    named = dict(dense.named_modules())
    first = {p: args.first_stage_ratio for p in args.first_stage if p in named}
    variants_kw = {'uniform': {}, 'latency': dict(allocation='latency')}
    if first:
        variants_kw['first stage'] = dict(pruning_ratio_dict=first)
        variants_kw['first stage + latency'] = dict(pruning_ratio_dict=first,
                                                    allocation='latency')
    for (alloc, kwargs), rt in itertools.product(variants_kw.items(), args.round_tos):
        if alloc not in args.allocations:
            continue
        key = alloc if rt == args.round_tos[0] else f'{alloc} rt{rt}'
        kwargs = dict(kwargs, round_to=rt)
        t0 = time.perf_counter()
        m = copy.deepcopy(dense)
        res = mmprune.prune(m, cfg=cfg, input_shape=shape, target_flops=args.target, **kwargs)
        add(key, m, res, t0)
        info[key]['kwargs'] = kwargs
    rounds = []
    with torch.no_grad():
        for _ in range(args.reps):
            ms = interleaved_ms({k: (lambda v=v: inference_forward(v, batch))
                                 for k, v in variants.items()}, args.runs)
            rounds.append({k: round(v, 2) for k, v in ms.items()})
            print(name, ' '.join(f'{k}: {v:.0f} ms' for k, v in ms.items()), flush=True)
    for k in variants:
        if k == 'dense':
            continue
        effs = [r['dense'] / r[k] * fracs[k] for r in rounds]
        info[k].update(eff_rounds=[round(e, 3) for e in effs], eff_mean=statistics.mean(effs))
    return dict(model=name, seed=seed, config=config, shape=list(shape), target=args.target,
                rounds_ms=rounds, variants=info)


def table(records: list) -> str:
    seeds = len({r['seed'] for r in records}) > 1
    lines = ['| model | allocation | FLOPs | efficiency per round | mean |',
             '|---|---|---|---|---|']
    means: dict = {}
    for rec in records:
        for k, v in rec['variants'].items():
            model = rec['model'] + (f' seed {rec["seed"]}' if seeds else '')
            lines.append(f'| {model} | {k} | {100 * v["flops_ratio"]:.1f}% | '
                         f'{" ".join(f"{e:.2f}" for e in v["eff_rounds"])} | '
                         f'{v["eff_mean"]:.3f} |')
            means.setdefault((rec['model'], k), []).append(v['eff_mean'])
    if seeds:  # the mean over the seeds, per model and variant
        lines += ['', '| model | allocation | seeds | mean efficiency |', '|---|---|---|---|']
        lines += [f'| {m} | {k} | {len(v)} | {statistics.mean(v):.3f} |'
                  for (m, k), v in means.items()]
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['faster_rcnn_r50', 'retinanet_r50',
                                                   'mask_rcnn_r50'],
                   help=f'names from {list(MODELS)} or config paths')
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--shape', type=int, nargs=2, default=(512, 512))
    p.add_argument('--reps', type=int, default=4)
    p.add_argument('--runs', type=int, default=6)
    p.add_argument('--first-stage-ratio', type=float, default=0.7)
    p.add_argument('--first-stage', nargs='+', default=list(FIRST_STAGE),
                   help='module names of the "first stage" variant (those present are used)')
    p.add_argument('--allocations', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    p.add_argument('--round-tos', type=int, nargs='+', default=[8],
                   help='round_to values; the first gives the plain keys')
    p.add_argument('--seeds', type=int, nargs='+', default=[0],
                   help='random inits per model (torch.manual_seed before building it)')
    add_run_options(p, 'allocation')
    args = p.parse_args(argv)
    apply_malloc(args)
    records = []
    for name, seed in itertools.product(args.models, args.seeds):
        config = MODELS.get(name, name)
        t0 = time.time()
        records.append(bench(name, config, args, seed))
        print(f'{name} (seed {seed}): {time.time() - t0:.0f} s', flush=True)
    write_results(args, table(records), records)
    return 0


if __name__ == '__main__':
    sys.exit(main())
