"""Allocation across layers: at the same FLOPs, does pruning some layers more run faster?

    python benchmarks/allocation.py [--models faster_rcnn_r50 ...] [--target 0.5]
                                    [--reps 4] [--runs 6] [--shape 512 512]
                                    [--first-stage-ratio 0.7] [--out FILE.json]

Each model (random init; speed does not depend on the weights) is pruned to
``--target`` of its dense FLOPs three ways, all with the library defaults
otherwise (``group_l2``, ``round_to=8``):

* ``uniform``: ``mmprune.prune(target_flops=t)``, one ratio for every group
  (the default);
* ``time/FLOP``: every prunable layer's ratio is the common ratio times the
  layer's measured time per FLOP in the dense model (its own time plus that of
  the weightless modules that read its output: ReLU, pooling), relative to the
  model's, clipped to [0.5, 2] (``pruning_ratio_dict``); the common ratio is
  searched until the FLOPs are within 2 % of the target;
* ``first stage``: the stem and the first stage (the highest-resolution layers:
  ``backbone.conv1`` / ``backbone.stem`` and ``backbone.layer1``) at
  ``--first-stage-ratio`` (``pruning_ratio_dict``), the rest at the ratio
  ``target_flops`` searches.

The dense model and the three pruned ones are timed interleaved in eager
PyTorch on CPU (``tools/test.py``'s ``interleaved_ms``: run k of each before
run k+1 of any, two warm-ups, medians), ``--reps`` rounds of ``--runs`` runs.
Efficiency = speed-up x FLOPs fraction, per round and its mean over rounds.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import MODELS  # noqa: E402  (benchmarks/speed.py)
from test import interleaved_ms  # noqa: E402  (tools/test.py)

WEIGHT_RANGE = (0.5, 2.0)
FIRST_STAGE = ('backbone.conv1', 'backbone.stem', 'backbone.layer1')


def _first_tensor(x: Any):
    import torch
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (tuple, list)):
        for v in x:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def layer_times(model, batch, runs: int = 2) -> Dict[str, float]:
    """Seconds per forward of each layer with weights, plus the time of the
    weightless leaf modules that read its output (found by tensor storage;
    the tensors are kept alive so that no later tensor reuses a storage).
    Fastest of ``runs`` forwards after a warm-up."""
    import torch

    from mmprune.graph import tensor_forward
    owners = {n for n, m in model.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    leaves = {n: m for n, m in model.named_modules()
              if n and (n in owners or not any(True for _ in m.children()))}
    started: Dict[str, List[float]] = {}
    spent: Dict[str, float] = {}
    written: Dict[int, Tuple[str, Any]] = {}

    def storage(t):
        return None if t is None else t.untyped_storage().data_ptr()

    def pre(name):
        def hook(module, args):
            started.setdefault(name, []).append(time.perf_counter())
        return hook

    def post(name):
        def hook(module, args, output):
            dt = time.perf_counter() - started[name].pop()
            owner = name if name in owners else \
                written.get(storage(_first_tensor(args)), (None, None))[0]
            if owner is not None:
                spent[owner] = spent.get(owner, 0.0) + dt
                out = _first_tensor(output)
                if out is not None:
                    written[storage(out)] = (owner, out)
        return hook

    handles = [h for n, m in leaves.items()
               for h in (m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n)))]
    best: Dict[str, float] = {}
    try:
        with torch.no_grad():
            for i in range(runs + 1):
                spent.clear()
                tensor_forward(model, batch)
                written.clear()
                if i:
                    best = dict(spent) if not best else \
                        {k: min(v, spent.get(k, v)) for k, v in best.items()}
    finally:
        for h in handles:
            h.remove()
    return best


def time_per_flop_weights(model, batch, prunable: List[str]) -> Dict[str, float]:
    from mmprune.flops import layer_flops, record_shapes
    times = layer_times(model, batch)
    flops = layer_flops(model, record_shapes(model, batch))
    names = [n for n in prunable if flops.get(n, 0) > 0 and n in times]
    total_t = sum(times[n] for n in names)
    total_f = sum(flops[n] for n in names)
    lo, hi = WEIGHT_RANGE
    return {n: min(max((times[n] / total_t) / (flops[n] / total_f), lo), hi) for n in names}


def prune_weighted(dense, cfg, shape, target: float, weights: Dict[str, float]):
    """Prune a copy with ratio ``s * weight`` per layer, ``s`` searched for ``target``."""
    import mmprune
    from mmprune.pruner import FLOPS_TOLERANCE
    lo, hi = 0.0, 0.9 / max(weights.values())
    s = min(1 - target ** 0.5, hi)
    trials = []
    for _ in range(10):
        m = copy.deepcopy(dense)
        res = mmprune.prune(m, pruning_ratio=s, cfg=cfg, input_shape=shape,
                            pruning_ratio_dict={n: min(s * w, 0.9) for n, w in weights.items()})
        frac = res.flops[1] / res.flops[0]
        trials.append((abs(frac - target), m, res))
        if abs(frac - target) <= FLOPS_TOLERANCE * target:
            break
        lo, hi = (s, hi) if frac > target else (lo, s)
        s = (lo + hi) / 2
    _, m, res = min(trials, key=lambda t: t[0])
    return m, res


def bench(name: str, config: str, args) -> dict:
    import torch

    import mmprune
    from mmprune.graph import make_batch, tensor_forward
    from mmprune.pruner import _attention_projections
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

    t0 = time.perf_counter()
    m = copy.deepcopy(dense)
    res = mmprune.prune(m, cfg=cfg, input_shape=shape, target_flops=args.target)
    add('uniform', m, res, t0)
    kept = set(res.output_layers) | {n for n, mod in dense.named_modules()
                                     if mod in set(_attention_projections(dense))}
    prunable = [n for n, mod in dense.named_modules()
                if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)) and n not in kept]
    t0 = time.perf_counter()
    weights = time_per_flop_weights(dense, batch, prunable)
    add('time/FLOP', *prune_weighted(dense, cfg, shape, args.target, weights), t0)
    info['time/FLOP']['weights'] = {n: round(w, 3) for n, w in weights.items()}
    named = dict(dense.named_modules())
    first = [p for p in FIRST_STAGE if p in named]
    if first:
        t0 = time.perf_counter()
        m = copy.deepcopy(dense)
        res = mmprune.prune(m, cfg=cfg, input_shape=shape, target_flops=args.target,
                            pruning_ratio_dict={p: args.first_stage_ratio for p in first})
        add('first stage', m, res, t0)
        info['first stage']['patterns'] = first
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
    p.add_argument('--out', default=os.path.join(
        ROOT, 'benchmarks', 'results', f'allocation_{time.strftime("%Y-%m-%d")}.json'))
    args = p.parse_args(argv)
    import torch

    from mmprune.checkpoint import atomic_write
    records = []
    for name in args.models:
        config = MODELS.get(name, name)
        t0 = time.time()
        records.append(bench(name, config, args))
        print(f'{name}: {time.time() - t0:.0f} s', flush=True)
    text = table(records)
    print('\n' + text)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=os.cpu_count())
    atomic_write(args.out, lambda f: json.dump(dict(info=info, args=vars(args), table=text,
                                                    records=records), open(f, 'w'), indent=1),
                 overwrite=True)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
