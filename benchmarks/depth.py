"""Width, depth or both: which reaches a measured CPU speed-up with the most FLOPs saved.

    python benchmarks/depth.py [--models retinanet_r50 ...] [--speedups 1.5 2]
                               [--modes width depth both] [--shape 512 512] [--runs 6]
                               [--allocation uniform|latency]
                               [--device cpu|cuda] [--malloc steady|default]
                               [--out benchmarks/results/depth_DATE.json]

For each model (the six of ``benchmarks/speed.py``; random init, with every norm's
weight drawn from U(0.5, 1.5) so that residual branches initialised to zero do some
work and the block criterion has something to rank) and each speed-up ``s``:

* **width**: ``prune(target_latency=1/s, remove_blocks=0)``, the channels of every
  prunable group;
* **depth**: blocks removed one at a time in the order of ``block_criterion='output'``
  (least change first), the latency timed after each (interleaved with the dense
  model), until it is at most ``1/s`` of the dense one (within 5 %) or no block is left;
* **both**: half the blocks depth needed (all it could remove, when it fell short), then
  ``prune(remove_blocks=those, target_latency=1/s)`` for the width;
* **auto** (not run unless asked): ``prune(remove_blocks='auto', target_latency=1/s)``,
  what ``target_latency`` does by default (blocks that buy time until the target, then
  the width).

With ``--flops F ... --block-shares B ...`` each model is also pruned to a FLOPs fraction
``F`` with a share ``B`` of its removable blocks gone first
(``prune(target_flops=F, remove_blocks=B)``; ``B=0``: width only): at equal FLOPs, how much
of the saving turns into time as the blocks take a larger part of it (the efficiency
target is stated at 50 % FLOPs). A share whose blocks alone leave less than ``F`` keeps
every channel and lands below ``F`` (the row shows its FLOPs). ``--allocation latency``
shares the width by each layer's measured time per FLOP in every prune (``prune``'s
``allocation``).

Every variant of a model is then timed in one final interleaved round beside the dense
model (``--runs`` each, medians), in PyTorch eager on ``--device`` (the CPU by default;
with ``cuda`` the searches time on the GPU too), on the inference forward
(:func:`mmprune.tracing.inference_forward`). ``search_latency`` in the records is what
the search itself last measured, to compare with the final timing (how closely a target
lands). Efficiency = speed-up x FLOPs fraction (1.0: every FLOP saved became time saved;
above 1: more time saved than FLOPs, as removing a block's memory-bound work does).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from speed import MODELS, add_run_options, apply_malloc, run_models, write_results  # noqa: E402,E501

MODES = ('width', 'depth', 'both', 'auto')


def build(config: str, shape, seed: int = 0, device: str = 'cpu'):
    import torch

    import mmprune
    from mmprune.tracing import make_batch
    torch.manual_seed(seed)
    model, cfg = mmprune.build_model(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm,
                              torch.nn.LayerNorm)) and getattr(m, 'weight', None) is not None:
                m.weight.uniform_(0.5, 1.5)
    model.to(device).eval()  # the batch follows the data preprocessor to the device
    return model, cfg, make_batch(model, cfg, shape)


def depth_until(model, cfg, batch, target: float, runs: int):
    """Remove blocks in the criterion's order until the measured latency is ``target``
    of the dense model's; returns (removed names, measured fraction)."""
    from mmprune.depth import remove_blocks, score_blocks, find_blocks
    from mmprune.search import LATENCY_TOLERANCE
    from mmprune.timing import LatencyRatio
    meter = LatencyRatio(copy.deepcopy(model), batch, runs)
    blocks = find_blocks(model, batch)
    scores = score_blocks(model, blocks, [batch])
    removed, frac = [], 1.0
    for block in sorted(blocks, key=lambda b: scores[b.name]):
        remove_blocks(model, [block])
        removed.append(block.name)
        frac = meter(model)
        print(f'    depth: {len(removed)} blocks, latency {frac:.1%}', flush=True)
        if frac <= target * (1 + LATENCY_TOLERANCE):
            break
    return removed, frac


def bench_model(name: str, config: str, args) -> dict:
    import mmprune
    from mmprune.flops import count_flops_params
    from mmprune.timing import device_sync, interleaved_ms
    from mmprune.tracing import inference_forward
    import torch
    dense, cfg, batch = build(config, args.shape, device=args.device)
    flops0, params0 = count_flops_params(dense, batch)
    variants, info = {}, {}
    common = dict(cfg=cfg, input_shape=args.shape, allocation=args.allocation)
    for s in args.speedups:
        target = 1 / s
        depth_blocks = None
        for mode in args.modes:
            key = f'{s:g}x {mode}'
            t0 = time.time()
            model = copy.deepcopy(dense)
            try:
                if mode == 'width':
                    r = mmprune.prune(model, **common, target_latency=target, remove_blocks=0,
                                      latency_runs=args.runs)
                    detail = dict(pruning_ratio=r.options['pruning_ratio'],
                                  search_latency=r.options.get('latency_ratio'))
                elif mode == 'depth':
                    depth_blocks, frac = depth_until(model, cfg, batch, target, args.runs)
                    detail = dict(blocks=len(depth_blocks), search_latency=round(frac, 4))
                elif mode == 'both':
                    if depth_blocks is None:
                        probe = copy.deepcopy(dense)
                        depth_blocks, _ = depth_until(probe, cfg, batch, target, args.runs)
                        del probe
                    half = depth_blocks[:max(1, math.ceil(len(depth_blocks) / 2))]
                    r = mmprune.prune(model, **common, remove_blocks=half, target_latency=target,
                                      latency_runs=args.runs)
                    detail = dict(blocks=len(half), pruning_ratio=r.options['pruning_ratio'],
                                  search_latency=r.options.get('latency_ratio'))
                elif mode == 'auto':
                    r = mmprune.prune(model, **common, remove_blocks='auto', target_latency=target,
                                      latency_runs=args.runs)
                    detail = dict(blocks=len(r.removed_blocks),
                                  pruning_ratio=r.options['pruning_ratio'],
                                  search_latency=r.options.get('latency_ratio'))
            except Exception as e:  # a row says why, the others go on
                info[key] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
                print(f'  {key}: {info[key]["error"]}', flush=True)
                continue
            flops, params = count_flops_params(model, batch)
            variants[key] = model.eval()
            info[key] = dict(detail, flops=flops, params=params, prune_s=round(time.time() - t0))
            print(f'  {key}: {detail}, FLOPs {flops / flops0:.1%}, {time.time() - t0:.0f} s',
                  flush=True)
    for f in args.flops:
        for share in args.block_shares:
            key = f'{f:g}F {share:g}b'
            t0 = time.time()
            model = copy.deepcopy(dense)
            try:
                r = mmprune.prune(model, **common, target_flops=f,
                                  remove_blocks=share or None)
            except Exception as e:
                info[key] = dict(error=f'{type(e).__name__}: {str(e)[:300]}')
                print(f'  {key}: {info[key]["error"]}', flush=True)
                continue
            flops, params = count_flops_params(model, batch)
            variants[key] = model.eval()
            info[key] = dict(asked=f'{f:.0%} FLOPs', mode=f'{share:.0%} of blocks + width',
                             blocks=len(r.removed_blocks),
                             pruning_ratio=r.options['pruning_ratio'], flops=flops,
                             params=params, prune_s=round(time.time() - t0))
            print(f'  {key}: {len(r.removed_blocks)} blocks, ratio '
                  f'{r.options["pruning_ratio"]:.3f}, FLOPs {flops / flops0:.1%}, '
                  f'{time.time() - t0:.0f} s', flush=True)
    fns = {'dense': lambda: inference_forward(dense, batch)}
    fns.update({k: (lambda m=m: inference_forward(m, batch)) for k, m in variants.items()})
    with torch.no_grad():
        ms = interleaved_ms(fns, args.runs, device_sync(args.device))
    for key in variants:
        row = info[key]
        row.update(ms=round(ms[key], 1), speedup=round(ms['dense'] / ms[key], 3),
                   flops_frac=round(row['flops'] / flops0, 4),
                   params_frac=round(row['params'] / params0, 4))
        row['efficiency'] = round(row['speedup'] * row['flops_frac'], 3)
    return dict(name=name, config=config, dense_ms=round(ms['dense'], 1), flops=flops0,
                params=params0, variants=info)


def table(records: list) -> str:
    lines = ['| model | asked | mode | blocks | width ratio | latency: search / re-timed | '
             'speed-up | FLOPs | params | efficiency |', '|---' * 10 + '|']
    for rec in records:
        for key, row in rec['variants'].items():
            asked, mode = (row['asked'], row['mode']) if 'asked' in row else key.split(' ')
            if 'error' in row:
                lines.append(f'| {rec["name"]} | {asked} | {mode} | {row["error"][:80]} '
                             f'| | | | | | |')
                continue
            ratio, read = row.get('pruning_ratio'), row.get('search_latency')
            lines.append(
                f'| {rec["name"]} | {asked} | {mode} | {row.get("blocks", 0)} | '
                f'{"-" if ratio is None else f"{ratio:.3f}"} | '
                f'{"-" if read is None else f"{read:.1%}"} / {1 / row["speedup"]:.1%} | '
                f'{row["speedup"]:.2f}x | '
                f'{row["flops_frac"]:.1%} | {row["params_frac"]:.1%} | {row["efficiency"]:.2f} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODELS),
                   help=f'names from {list(MODELS)} or config paths')
    p.add_argument('--speedups', type=float, nargs='*', default=[1.5, 2.0],
                   help='measured speed-ups asked of each --modes (none: only --flops rows)')
    p.add_argument('--modes', nargs='*', choices=MODES, default=list(MODES[:3]))
    p.add_argument('--flops', type=float, nargs='*', default=[],
                   help='also prune to these FLOPs fractions, one variant per --block-shares')
    p.add_argument('--block-shares', type=float, nargs='+', default=[0, 0.25, 0.5, 0.75, 1.0],
                   help='shares of the removable blocks removed before the width (--flops)')
    p.add_argument('--shape', type=int, nargs=2, default=(512, 512))
    p.add_argument('--allocation', default='uniform', choices=('uniform', 'latency'),
                   help="how the width is shared among the layers (prune's allocation)")
    p.add_argument('--runs', type=int, default=6)
    p.add_argument('--device', default='cpu',
                   help='where the models run, are pruned and timed (cpu, cuda, cuda:1)')
    add_run_options(p, 'depth')
    args = p.parse_args(argv)
    apply_malloc(args)
    records = run_models(args, bench_model)
    write_results(args, table(records), records)
    return 0


if __name__ == '__main__':
    sys.exit(main())
