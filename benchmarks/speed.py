"""Real speed-ups: dense vs pruned latency, side by side in one process.

    python benchmarks/speed.py [--models retinanet_r50 ...] [--targets 0.7 0.5 0.3]
                               [--shape 512 512] [--runs 10] [--no-onnx] [--round-to N [M ...]]
                               [--fast-counts on off] [--allocation uniform latency]
                               [--fused-attention] [--malloc steady|default]
                               [--out benchmarks/results/speed_DATE.json]

For each model (random init; speed does not depend on the weights) the
dense model is pruned with ``mmprune.prune(target_flops=t)`` for each target,
with the default ``allocation='uniform'`` and with ``allocation='latency'``,
then every variant's inference forward at batch 1
(:func:`mmprune.tracing.inference_forward`: the host's ``mode='tensor'``, no
auxiliary heads; two-stage detectors run their RPN, then 1000 fixed proposals
through the RoI head) is timed *interleaved*
(run k of every variant before run k+1 of any, order rotated, two warm-up
calls each; medians), in PyTorch eager on CPU, in ONNX Runtime on CPU (not for
two-stage detectors, whose RoI head needs the RPN's proposals in the graph),
and on GPU when one is present. ``--fused-attention`` runs the eager timings
(CPU and GPU) with every ``nn.MultiheadAttention`` asked for no attention
weights, which mmcv's and mmseg's attention wrappers ask for and drop, so that
PyTorch runs its fused ``scaled_dot_product_attention`` (same outputs and
structures; the prunes and the ONNX rows run without it). glibc malloc
is first made to reuse its pages (``--malloc steady``, :func:`steady_malloc`):
with its defaults the dense models paid page faults that the pruned ones did
not, by the order of the models.
Efficiency = speed-up / (dense FLOPs / pruned FLOPs), both FLOPs counted on that
same inference forward (what ``target_flops`` aims at): 1.0 means the FLOPs
saved turn fully into time saved. The counts of the pruner's traced graph
(auxiliary heads included, 4 proposals) are kept in the JSON as ``flops_traced``.

Also timed: ``mmprune.prune`` at a fixed ratio (0.5, l2: graph build, scoring,
pruning, structure) against the same prune written by hand with raw
torch-pruning (``MetaPruner`` + ``GroupMagnitudeImportance``, given the output
layers mmprune found, forward in ``mode='tensor'``), alone and with the FLOPs
counts before and after that mmprune also does (mmprune traces the graph at a
short side of the ``trace_side`` option, counts the dense FLOPs at ``--shape``
and re-counts the pruned ones from a forward at the traced size, see
``mmprune.flops``). "without them": mmprune's time less its FLOPs-counting
forwards, against raw torch-pruning's graph build + prune ("ratio").
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmprune.timing import interleaved_ms, steady_malloc  # noqa: E402,F401  (benchmarks call speed.steady_malloc)

MODELS = {
    'retinanet_r50': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'faster_rcnn_r50': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mask_rcnn_r50': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'pspnet_r50': 'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'deeplabv3plus_r50': 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    'segformer_b0': 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
}


def raw_torch_pruning(model, batch, output_layers: list, ratio: float) -> float:
    """The same prune by hand with torch-pruning; returns its wall time in s."""
    import torch_pruning as tp

    from mmprune.tracing import tensor_forward
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in output_layers if n in modules]
    model.eval()
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, example_inputs=batch, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=ignored,
        forward_fn=lambda m, b: tensor_forward(m, b))
    pruner.step()
    return time.perf_counter() - t0


@contextlib.contextmanager
def fused_attention():
    """While it lasts, ``nn.MultiheadAttention`` skips the attention weights that
    its callers drop: its ``need_weights=False`` path calls PyTorch's fused
    ``scaled_dot_product_attention`` (same output; the weights come back as None)."""
    import torch.nn as nn
    real = nn.MultiheadAttention.forward

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, **kwargs):
        return real(self, query, key, value, key_padding_mask, False, **kwargs)
    nn.MultiheadAttention.forward = forward
    try:
        yield
    finally:
        nn.MultiheadAttention.forward = real


@contextlib.contextmanager
def timed(module, name: str):
    """Accumulate the wall time spent in ``module.name`` while the block runs."""
    real, total = getattr(module, name), [0.0]

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - t0
    setattr(module, name, wrapper)
    try:
        yield total
    finally:
        setattr(module, name, real)


def bench_model(name: str, config: str, args) -> dict:
    import torch

    import mmprune
    from mmprune.tracing import inference_forward, make_batch, tensor_forward
    import mmprune.flops as flops_mod
    from mmprune.flops import count_flops_params
    shape = tuple(args.shape)
    dense, cfg = mmprune.build_model(config)
    dense.eval()
    batch = make_batch(dense, cfg, shape)
    flops0, params0 = count_flops_params(dense, batch)
    rec = dict(model=name, config=config, shape=list(shape), dense=dict(
        flops=flops0, params=params0,
        flops_traced=count_flops_params(dense, batch, tensor_forward)[0]))
    # prune time: mmprune vs raw torch-pruning, both at ratio 0.5 from the dense model;
    # mmprune's own FLOPs counting (before and after, at the full input) is timed apart
    m = copy.deepcopy(dense)
    with timed(flops_mod, '_record') as counting:  # the forwards that count FLOPs
        t0 = time.perf_counter()
        res = mmprune.prune(m, 0.5, cfg=cfg, input_shape=shape, round_to=args.round_to)
        rec['mmprune_prune_s'] = round(time.perf_counter() - t0, 2)
    rec['mmprune_count_s'] = round(counting[0], 2)
    raw = copy.deepcopy(dense)
    t0 = time.perf_counter()  # what a hand-written prune adds to report its FLOPs
    count_flops_params(raw, batch)
    count_s = time.perf_counter() - t0
    try:
        rec['raw_tp_prune_s'] = round(raw_torch_pruning(raw, batch, res.output_layers, 0.5), 2)
    except Exception as e:  # noqa: BLE001 - raw torch-pruning fails on some families
        rec['raw_tp_prune_s'] = None
        rec['raw_tp_error'] = f'{type(e).__name__}: {str(e)[:200]}'
    else:
        try:
            t0 = time.perf_counter()
            count_flops_params(raw, batch)
            rec['raw_tp_count_s'] = round(count_s + time.perf_counter() - t0, 2)
        except Exception as e:  # noqa: BLE001 - the model it pruned may not run
            rec['raw_tp_broken'] = f'{type(e).__name__}: {str(e)[:200]}'
    variants = {'dense': dense}
    rec['pruned'] = {}
    for t, rt, fast, alloc in itertools.product(args.targets, args.round_tos, args.fast_counts,
                                                args.allocations):
        m = copy.deepcopy(dense)
        t0 = time.perf_counter()
        res = mmprune.prune(m, cfg=cfg, input_shape=shape, target_flops=t, round_to=rt,
                            allocation=alloc, fast_counts=fast == 'on')
        m.eval()
        key = f'{t:g}' + ('' if rt == args.round_to else f' rt{rt or 1}') + (
            '' if fast == args.fast_counts[0] else f' fast-{fast}') + (
            '' if alloc == args.allocations[0] else f' {alloc}')
        variants[key] = m
        rec['pruned'][key] = dict(flops=res.flops[1], params=res.params[1],
                                  flops_ratio=res.flops[1] / res.flops[0],
                                  flops_traced=count_flops_params(m, batch, tensor_forward)[0],
                                  round_to=rt, fast_counts=fast, allocation=alloc,
                                  prune_s=round(time.perf_counter() - t0, 2))
    eager_mode = fused_attention() if args.fused_attention else contextlib.nullcontext()
    with eager_mode, torch.no_grad():
        eager = interleaved_ms({k: (lambda v=v: inference_forward(v, batch))
                                for k, v in variants.items()}, args.runs)
        rec['eager_cpu_ms'] = {k: round(v, 2) for k, v in eager.items()}
        if torch.cuda.is_available():
            gbatch = dict(inputs=batch['inputs'].cuda(), data_samples=batch['data_samples'])
            for v in variants.values():
                v.cuda()
            gpu = interleaved_ms({k: (lambda v=v: inference_forward(v, gbatch))
                                  for k, v in variants.items()}, args.runs, torch.cuda.synchronize)
            for v in variants.values():
                v.cpu()
            rec['eager_gpu_ms'] = {k: round(v, 3) for k, v in gpu.items()}
    two_stage = getattr(dense, 'roi_head', None) is not None
    if args.onnx and not two_stage:
        try:
            rec['ort_cpu_ms'] = onnx_ms(variants, batch['inputs'], args, name)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - an export ONNX refuses
            rec['ort_note'] = f'export failed: {type(e).__name__}: {str(e)[:160]}'
    elif two_stage:
        rec['ort_note'] = 'two-stage: RoI head needs proposals in the graph (mmdeploy)'
    return rec


def onnx_ms(variants: dict, image, args, name: str) -> dict:
    import tempfile

    import onnxruntime as ort

    from mmprune.cli.export import TensorGraph, export
    sessions = {}
    import torch
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # same threads as the eager timing
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in variants.items():
            path = os.path.join(tmp, f'{name}_{k}.onnx')
            export(TensorGraph(v).eval(), image, path)
            sessions[k] = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    feed = {'image': image.numpy()}
    ms = interleaved_ms({k: (lambda s=s: s.run(None, feed)) for k, s in sessions.items()},
                        args.runs)
    return {k: round(v, 2) for k, v in ms.items()}


def rows(rec: dict) -> list:
    out = []
    for t, p in rec['pruned'].items():
        row = dict(model=rec['model'], target=t, flops_ratio=p['flops_ratio'], prune_s=p['prune_s'])
        for key in ('eager_cpu_ms', 'ort_cpu_ms', 'eager_gpu_ms'):
            if key in rec:
                sp = rec[key]['dense'] / rec[key][t]
                row[key.replace('_ms', '_speedup')] = sp
                row[key.replace('_ms', '_eff')] = sp * p['flops_ratio']
        out.append(row)
    return out


def table(records: list) -> str:
    cols = [('eager_cpu', 'eager CPU'), ('ort_cpu', 'ORT CPU'), ('eager_gpu', 'eager GPU')]
    cols = [c for c in cols if any(f'{c[0]}_speedup' in r for rec in records for r in rows(rec))]
    head = '| model | target | FLOPs | ' + ' | '.join(f'{h} speed-up | eff.' for _, h in cols) + \
        ' | prune s |'
    lines = [head, '|' + '---|' * (4 + 2 * len(cols))]
    for rec in records:
        dense = ' | '.join(f'{rec[f"{c}_ms"]["dense"]:.1f} ms | 1.00' if f'{c}_ms' in rec
                           else '- | -' for c, _ in cols)
        lines.append(f'| {rec["model"]} | dense | 100% | {dense} | - |')
        for r in rows(rec):
            cells = []
            for c, _ in cols:
                if f'{c}_speedup' in r:
                    cells += [f'{r[f"{c}_speedup"]:.2f}x', f'{r[f"{c}_eff"]:.2f}']
                else:
                    cells += ['-', '-']
            lines.append(f'| {rec["model"]} | {r["target"]} | {100 * r["flops_ratio"]:.1f}% | '
                         + ' | '.join(cells) + f' | {r["prune_s"]} |')
    lines.append('')
    lines.append('| model | mmprune.prune(0.5) s | of which FLOPs counts s | without them s '
                 '| raw torch-pruning s | ratio | raw + 2 FLOPs counts s | ratio |')
    lines.append('|---|---|---|---|---|---|---|---|')
    for rec in records:
        raw, ours = rec.get('raw_tp_prune_s'), rec['mmprune_prune_s']
        counts = rec.get('mmprune_count_s', 0)
        bare = round(ours - counts, 2)
        head = f'| {rec["model"]} | {ours} | {counts} | {bare} | '
        if not raw:
            lines.append(head + f'failed: {rec.get("raw_tp_error", "")[:80]} | - | - | - |')
            continue
        if 'raw_tp_count_s' not in rec:  # pruned, but the result does not run
            lines.append(head + f'{raw} | {bare / raw:.2f} | its pruned model fails: '
                         f'{rec.get("raw_tp_broken", "")[:60]} | - |')
            continue
        counted = raw + rec['raw_tp_count_s']
        lines.append(head + f'{raw} | {bare / raw:.2f} | {counted:.2f} | {ours / counted:.2f} |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=list(MODELS),
                   help=f'names from {list(MODELS)} or config paths')
    p.add_argument('--targets', type=float, nargs='+', default=[0.7, 0.5, 0.3])
    p.add_argument('--shape', type=int, nargs=2, default=(512, 512))
    p.add_argument('--runs', type=int, default=10)
    from mmprune.options import DEFAULT_ROUND_TO
    p.add_argument('--round-to', type=int, nargs='+', default=[DEFAULT_ROUND_TO],
                   dest='round_tos',
                   help='channel multiple(s) of the pruned models (default: the library\'s, '
                        f'{DEFAULT_ROUND_TO}); several give one variant each, timed in the same '
                        'interleaved runs (0 = exact counts)')
    from mmprune.options import PruneOptions
    p.add_argument('--fast-counts', nargs='+', choices=['on', 'off'],
                   default=['on' if PruneOptions.fast_counts else 'off'],
                   help='the fast_counts option: rounded channel counts chosen for speed (on, '
                        'the default) or the nearest multiple (off); several give one variant '
                        'each, like --round-to')
    p.add_argument('--allocation', nargs='+', choices=['uniform', 'latency'],
                   default=['uniform', 'latency'], dest='allocations',
                   help="prune(allocation=...): the first (default: uniform, the library's "
                        "default) gives the plain rows, the others rows marked with their name")
    p.add_argument('--no-onnx', dest='onnx', action='store_false')
    p.add_argument('--fused-attention', action='store_true',
                   help='eager timings with nn.MultiheadAttention(need_weights=False), '
                        "PyTorch's fused attention kernel (fused_attention; prunes and ONNX as "
                        'without it)')
    add_run_options(p, 'speed')
    args = p.parse_args(argv)
    args.round_tos = [r or None for r in args.round_tos]
    args.round_to = args.round_tos[0]  # the prune-time comparison uses the first
    apply_malloc(args)
    write_results(args, table(records := run_models(args, bench_model)), records)
    return 0


def run_models(args, bench) -> list:
    """``bench(name, config, args)`` for each of ``args.models`` (names of :data:`MODELS`
    or config paths); the records so far are written to ``args.out`` after each, so that
    a crash later keeps the models done."""
    from mmprune.checkpoint import atomic_write
    records = []
    for name in args.models:
        config = MODELS.get(name, name)
        if name not in MODELS:
            name = os.path.splitext(os.path.basename(name))[0]
        t0 = time.time()
        print(f'{name}:', flush=True)
        records.append(bench(name, config, args))
        print(f'{name}: {time.time() - t0:.0f} s', flush=True)
        atomic_write(args.out, lambda f: json.dump(dict(args=vars(args), records=records,
                                                        partial=True), open(f, 'w'), indent=1),
                     overwrite=True)
    return records


def add_run_options(parser, out_stem: str) -> None:
    """``--malloc`` and ``--out`` (``benchmarks/results/<out_stem>_<date>.json``)."""
    parser.add_argument('--malloc', choices=['steady', 'default'], default='steady',
                        help='steady (default): glibc malloc keeps and reuses its pages '
                             '(steady_malloc), so timings do not depend on tensor sizes crossing '
                             'its mmap threshold or on the models run before; default: as is')
    parser.add_argument('--out', default=os.path.join(
        ROOT, 'benchmarks', 'results', f'{out_stem}_{time.strftime("%Y-%m-%d")}.json'))


def apply_malloc(args) -> None:
    if args.malloc == 'steady' and not steady_malloc():
        print('--malloc steady: not glibc, malloc left as is', flush=True)
        args.malloc = 'default (steady not available)'


def cpu_model() -> str:
    """The CPU's model name (Linux), for telling runs on different machines apart."""
    try:
        with open('/proc/cpuinfo') as f:
            return next((line.split(':', 1)[1].strip() for line in f
                         if line.startswith('model name')), '')
    except OSError:
        return ''


def write_results(args, text: str, records: list) -> None:
    """Print the table and write it, the records and the machine to ``args.out``."""
    import torch

    from mmprune.checkpoint import atomic_write
    print('\n' + text)
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(),
                cpu=os.cpu_count(), cpu_model=cpu_model(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    atomic_write(args.out, lambda f: json.dump(dict(info=info, args=vars(args), table=text,
                                                    records=records), open(f, 'w'), indent=1),
                 overwrite=True)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    sys.exit(main())
