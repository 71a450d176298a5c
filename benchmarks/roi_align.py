"""mmcv's and torchvision's RoI align on CPU: the op that bounds two-stage detectors.

    python benchmarks/roi_align.py [--rois 1000] [--channels 256 192 128] [--runs 5]

RoI align has no FLOPs (no counter counts it), yet on 1000 proposals it is about half
of a Faster R-CNN-R50 forward on CPU (docs/speed.md). This times both kernels on a
128x128 feature map (the finest FPN level at 512x512) with random boxes, at 1 and 2
threads, for each channel count, and checks that they agree.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rois', type=int, default=1000)
    p.add_argument('--channels', type=int, nargs='+', default=[256, 192, 128])
    p.add_argument('--runs', type=int, default=5)
    args = p.parse_args(argv)
    import torch
    from mmcv.ops import roi_align as mmcv_roi_align
    from torchvision.ops import roi_align as tv_roi_align
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(args.rois, 2, generator=gen) * 400
    wh = torch.rand(args.rois, 2, generator=gen) * 100 + 8
    rois = torch.cat([torch.zeros(args.rois, 1), xy, xy + wh], 1)
    print('| channels | threads | mmcv ms | torchvision ms | max abs diff |')
    print('|---|---|---|---|---|')
    threads = torch.get_num_threads()
    for c in args.channels:
        feat = torch.randn(1, c, 128, 128, generator=gen)
        kernels = {'mmcv': lambda: mmcv_roi_align(feat, rois, (7, 7), 1 / 4, 0, 'avg', True),
                   'tv': lambda: tv_roi_align(feat, rois, (7, 7), 1 / 4, 0, True)}
        diff = (kernels['mmcv']() - kernels['tv']()).abs().max().item()
        for n in sorted({1, threads}):
            torch.set_num_threads(n)
            ms = {}
            for k, fn in kernels.items():
                fn()
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                ms[k] = statistics.median(times) * 1e3
            print(f'| {c} | {n} | {ms["mmcv"]:.0f} | {ms["tv"]:.0f} | {diff:.1e} |')
        torch.set_num_threads(threads)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
