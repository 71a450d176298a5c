"""Params, FLOPs, latency and the per-layer channel table of a (pruned) model.

    mmprune analyze CONFIG [CHECKPOINT] [--input-shape H W] [--layers 40] [--runs 10]

(``python tools/analyze.py`` takes the same arguments.) For a pruned config
(``mmprune.PrunedModel``) the dense model it came from is built too, and every
pruned layer is listed with its channels dense -> pruned. FLOPs are torch-pruning's
count of multiply-accumulates of the forward a deployed model runs
(:func:`mmprune.tracing.inference_forward`: the host's ``mode='tensor'``, no auxiliary
heads, 1000 proposals through a two-stage RoI head), the count ``prune()`` reports
and ``target_flops`` aims at; where the graph ``prune()`` traces (auxiliary heads
included, 4 proposals) counts differently, that count is printed too
(``flops_traced``). mmengine's ``get_model_complexity_info`` of the same forward is
printed beside it for reference (it skips operations it has no handler for, so it
can read lower on attention models). Latency is the median CPU time of that forward
at batch 1 (``--runs 0`` skips it).
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn as nn

import mmprune
from mmprune.apis import dense_model_cfg, is_pruned_config, load_config
from mmprune.flops import FlopsCounter, count_flops_params
from mmprune.structure import kept_channels
from mmprune.timing import forward_ms
from mmprune.tracing import inference_forward, make_batch, tensor_forward


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='mmprune analyze', description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'))
    p.add_argument('--layers', type=int, default=40, help='rows of the channel table (0: all)')
    p.add_argument('--runs', type=int, default=10, help='timed runs for latency (0: not timed)')
    p.add_argument('--json', help='write the numbers here')
    return p.parse_args(argv)


class _Forward(nn.Module):
    """Lets mmengine's module-level counter run ``forward(model, batch)``."""

    def __init__(self, model: nn.Module, forward) -> None:
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, batch):
        return self._forward(self.model, batch)


def mmengine_flops(model, batch, forward=inference_forward):
    """mmengine's own count, or None when its tracer cannot run the model."""
    try:
        from mmengine.analysis import get_model_complexity_info
        info = get_model_complexity_info(_Forward(model, forward), inputs=(batch,),
                                         show_table=False, show_arch=False)
        return int(info['flops'])
    except Exception:  # noqa: BLE001 - a reference figure only
        return None


def _round(ms):
    return None if ms is None else round(ms, 2)


def measure(model, cfg, shape, runs):
    batch = make_batch(model, cfg, shape)
    model.eval()
    counter = FlopsCounter(model, batch)  # .forward: what it counted, and what is timed
    return dict(params=sum(p.numel() for p in model.parameters()), flops=counter.dense,
                flops_traced=count_flops_params(model, batch, tensor_forward)[0],
                mmengine_flops=mmengine_flops(model, batch, counter.forward),
                cpu_latency_ms=_round(forward_ms(model, batch, runs, 'cpu', counter.forward)),
                input_shape=list(batch['inputs'].shape[-2:]))


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config)
    model, cfg = mmprune.build_model(cfg, args.checkpoint)
    shape = tuple(args.input_shape) if args.input_shape else None
    report = dict(model=measure(model, cfg, shape, args.runs))
    rows = []
    if is_pruned_config(cfg):
        dense_cfg = copy.deepcopy(cfg)
        dense_cfg.model = dense_model_cfg(cfg)
        dense, _ = mmprune.build_model(dense_cfg)
        report['dense'] = measure(dense, dense_cfg, shape, args.runs)
        modules = dict(dense.named_modules())
        for name, attrs in kept_channels(cfg.model.structure).items():
            for key, value in attrs.items():
                before = getattr(modules[name], key)
                before = list(before) if isinstance(before, (tuple, torch.Size)) else before
                rows.append((name, key, before, value))
        report['layers'] = [dict(layer=n, attr=k, dense=b, pruned=a) for n, k, b, a in rows]

    m = report['model']
    print(f'{"":14s}{"model":>14s}' + (f'{"dense":>14s}{"ratio":>9s}' if 'dense' in report else ''))
    keys = [('params', 'M', 1e6), ('flops', 'G', 1e9), ('cpu_latency_ms', 'ms', 1)]
    if m['flops_traced'] != m['flops'] or report.get('dense', m)['flops_traced'] != \
            report.get('dense', m)['flops']:
        keys.insert(2, ('flops_traced', 'G', 1e9))  # what target_flops counted
    if m['cpu_latency_ms'] is None:
        keys.pop()  # --runs 0
    for key, unit, scale in keys:
        line = f'{key:14s}{m[key] / scale:>12.3f}{unit:2s}'
        if 'dense' in report:
            d = report['dense'][key]
            line += f'{d / scale:>12.3f}{unit:2s}{m[key] / d:>9.1%}'
        print(line)
    if m['mmengine_flops'] is not None:
        print(f'(mmengine counter: {m["mmengine_flops"] / 1e9:.3f}G for the model)')
    print(f'FLOPs: MACs at {"x".join(map(str, m["input_shape"]))}, per image, mmprune.flops, '
          f'of the inference forward (flops_traced: of the graph the pruner traces); '
          f'latency: median CPU inference forward, batch 1')
    if rows:
        shown = rows if args.layers == 0 else rows[:args.layers]
        width = max(len(r[0]) for r in shown)
        print(f'\n{"layer":{width}s}  {"attribute":14s}{"dense":>10s}{"pruned":>10s}')
        for name, key, before, after in shown:
            print(f'{name:{width}s}  {key:14s}{str(before):>10s}{str(after):>10s}')
        if len(shown) < len(rows):
            print(f'... {len(rows) - len(shown)} more (--layers 0 lists all)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == '__main__':
    main()
