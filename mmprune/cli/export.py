"""Export a (pruned) model's tensor-mode forward to ONNX and check it in onnxruntime.

    mmprune export CONFIG CHECKPOINT [--out model.onnx] [--input-shape H W]

(``python tools/export_onnx.py`` takes the same arguments.) The exported graph is
the network the host runs in ``mode='tensor'``: the raw head outputs (class scores,
box regressions, segmentation logits), without the host's Python post-processing
(NMS, resizing), which is what a deployment runtime re-implements (mmdeploy does the
same). Two-stage detectors need their RPN's proposals inside the graph and are
refused with a pointer to mmdeploy. The script prints the max absolute difference
between PyTorch and onnxruntime outputs and the median latency of both on CPU, and
writes ``<out>.json`` beside the model.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp

import torch
import torch.nn as nn

import mmprune
from mmprune.checkpoint import atomic_write
from mmprune.tracing import make_batch
from mmprune.timing import median_ms, steady_malloc


class TensorGraph(nn.Module):
    """``model._forward(image)`` with its nested outputs flattened to a tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        out = self.model._forward(image)
        flat = []

        def walk(o):
            if isinstance(o, torch.Tensor):
                flat.append(o)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)
            elif isinstance(o, dict):
                for v in o.values():
                    walk(v)
        walk(out)
        return tuple(flat)


def export(graph: nn.Module, image: torch.Tensor, out: str, opset: int = 17) -> tuple:
    """Write ``graph(image)`` to ONNX at ``out`` (through a temporary file, so a
    failure leaves nothing behind); returns PyTorch's outputs for the check."""
    with torch.no_grad():
        reference = graph(image)
    tmp = out + '.tmp'
    try:
        torch.onnx.export(graph, (image,), tmp, opset_version=opset, dynamo=False,
                          input_names=['image'],
                          output_names=[f'out{i}' for i in range(len(reference))])
    except Exception as e:
        if osp.exists(tmp):
            os.remove(tmp)
        hint = (' (ONNX adaptive pooling needs output sizes that divide the input: choose an '
                '--input-shape whose feature maps divide the pooling sizes, e.g. PSPNet at a '
                'multiple of 48)') if 'adaptive' in str(e) else ''
        raise SystemExit(f'ONNX export failed: {type(e).__name__}: {str(e)[:300]}{hint}') from e
    os.replace(tmp, out)
    return reference


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='mmprune export', description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?', help='weights (random init when omitted)')
    p.add_argument('--out', help='ONNX file (default: beside the checkpoint)')
    p.add_argument('--input-shape', type=int, nargs=2, metavar=('H', 'W'))
    p.add_argument('--opset', type=int, default=17)
    p.add_argument('--runs', type=int, default=10, help='timed runs (0: not timed)')
    p.add_argument('--overwrite', action='store_true')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, cfg = mmprune.build_model(args.config, args.checkpoint)
    if getattr(model, 'rpn_head', None) is not None or getattr(model, 'roi_head', None) is not None:
        raise SystemExit(f'{type(model).__name__} is a two-stage detector: its RoI head needs '
                         f'the RPN proposals inside the graph; export it with mmdeploy')
    model.eval()
    image = make_batch(model, cfg, args.input_shape)['inputs']
    graph = TensorGraph(model).eval()
    stem = osp.splitext(args.checkpoint or osp.basename(args.config))[0]
    out = args.out or f'{stem}.onnx'
    if osp.exists(out) and not args.overwrite:
        raise SystemExit(f'{out} exists; pass --overwrite to replace it')
    reference = export(graph, image, out, args.opset)

    import onnxruntime as ort
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    feed = {'image': image.numpy()}
    outputs = session.run(None, feed)
    diff = max(float((torch.from_numpy(o) - r).abs().max()) for o, r in zip(outputs, reference))
    steady_malloc()  # glibc reuses its pages, as in mmprune test's latency columns
    with torch.no_grad():
        torch_ms = median_ms(lambda: graph(image), args.runs)
    ort_ms = median_ms(lambda: session.run(None, feed), args.runs)
    rounded = (lambda ms: None if ms is None else round(ms, 2))
    summary = dict(config=args.config, checkpoint=args.checkpoint, onnx=out,
                   input_shape=list(image.shape), outputs=len(reference), max_abs_diff=diff,
                   torch_cpu_ms=rounded(torch_ms), ort_cpu_ms=rounded(ort_ms),
                   params=sum(p.numel() for p in model.parameters()),
                   onnx_mb=round(osp.getsize(out) / 2 ** 20, 2))
    atomic_write(out + '.json', lambda p: json.dump(summary, open(p, 'w'), indent=1),
                 overwrite=True)
    print(f'exported {out} ({summary["onnx_mb"]} MB, {len(reference)} outputs, input '
          f'{"x".join(map(str, image.shape))})')
    print(f'max abs diff PyTorch vs onnxruntime: {diff:.3g}')
    if args.runs > 0:
        print(f'CPU latency (median of {args.runs}): PyTorch {torch_ms:.2f} ms, '
              f'onnxruntime {ort_ms:.2f} ms')
    return summary


if __name__ == '__main__':
    main()
