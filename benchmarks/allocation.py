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
PyTorch on CPU (``tools/test.py``'s ``interleaved_ms``: run k of each before
run k+1 of any, two warm-ups, medians), ``--reps`` rounds of ``--runs`` runs,
with glibc malloc made to reuse its pages (``--malloc``, see ``speed.steady_malloc``).
Efficiency = speed-up x FLOPs fraction, per round and its mean over rounds.
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
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import (MODELS, add_malloc_option, apply_malloc,  # noqa: E402  (benchmarks/speed.py)
                   write_results)
from test import interleaved_ms  # noqa: E402  (tools/test.py)

FIRST_STAGE = ('backbone.conv1', 'backbone.stem', 'backbone.layer1')


def bench(name: str, config: str, args) -> dict:
    import torch

    import mmprune
    from mmprune.graph import make_batch, tensor_forward
    torch.manual_seed(0)
    dense, cfg = mmprune.build_model(config)
    dense.eval()
    shape = tuple(args.shape)
    batch = make_batch(dense, cfg, shape)
    variants, fracs, info = {'dense': dense}, {'dense': 1.0}, {}

    def add(key, model, res, t0):
        model.eval()
        variants[key], fracs[key] = model, res.flops[1] / res.flops[0]
        info[key] = dict(flops_ratio=fracs[key], prune_s=round(time.perf_counter() - t0, 1))

    named = dict(dense.named_modules())
    first = {p: args.first_stage_ratio for p in args.first_stage if p in named}
    variants_kw = {'uniform': {}, 'latency': dict(allocation='latency')}
    if first:
        variants_kw['first stage'] = dict(pruning_ratio_dict=first)
        variants_kw['first stage + latency'] = dict(pruning_ratio_dict=first,
                                                    allocation='latency')
    for key, kwargs in variants_kw.items():
        t0 = time.perf_counter()
        m = copy.deepcopy(dense)
        res = mmprune.prune(m, cfg=cfg, input_shape=shape, target_flops=args.target, **kwargs)
        add(key, m, res, t0)
        info[key]['kwargs'] = kwargs
    rounds = []
    with torch.no_grad():
        for _ in range(args.reps):
            ms = interleaved_ms({k: (lambda v=v: tensor_forward(v, batch))
                                 for k, v in variants.items()}, args.runs)
            rounds.append({k: round(v, 2) for k, v in ms.items()})
            print(name, ' '.join(f'{k}: {v:.0f} ms' for k, v in ms.items()), flush=True)
    for k in variants:
        if k == 'dense':
            continue
        effs = [r['dense'] / r[k] * fracs[k] for r in rounds]
        info[k].update(eff_rounds=[round(e, 3) for e in effs], eff_mean=statistics.mean(effs))
    return dict(model=name, config=config, shape=list(shape), target=args.target,
                rounds_ms=rounds, variants=info)


def table(records: list) -> str:
    lines = ['| model | allocation | FLOPs | efficiency per round | mean |',
             '|---|---|---|---|---|']
    for rec in records:
        for k, v in rec['variants'].items():
            lines.append(f'| {rec["model"]} | {k} | {100 * v["flops_ratio"]:.1f}% | '
                         f'{" ".join(f"{e:.2f}" for e in v["eff_rounds"])} | '
                         f'{v["eff_mean"]:.3f} |')
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
    add_malloc_option(p)
    p.add_argument('--out', default=os.path.join(
        ROOT, 'benchmarks', 'results', f'allocation_{time.strftime("%Y-%m-%d")}.json'))
    args = p.parse_args(argv)
    apply_malloc(args)
    records = []
    for name in args.models:
        config = MODELS.get(name, name)
        t0 = time.time()
        records.append(bench(name, config, args))
        print(f'{name}: {time.time() - t0:.0f} s', flush=True)
    write_results(args, table(records), records)
    return 0


if __name__ == '__main__':
    sys.exit(main())
