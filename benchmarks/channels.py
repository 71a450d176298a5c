"""Which channel counts are slow: convolution throughput per output-channel count.

    python benchmarks/channels.py [--sizes 128 64 32 16] [--counts 64 520 8] [--kernel 3]
                                  [--threads N] [--runs 9] [--out benchmarks/results/channels_DATE.json]

Times one ``nn.Conv2d(C, C, k)`` (eval, no grad, batch 1) per channel count C and
feature size, the median of ``--runs`` calls after three warm-ups, and prints
GMAC/s per count, marking (``P``) the counts whose number of 16-channel blocks is a
prime >= 7, which ``fast_counts` option, `mmprune.counts.ChannelCounts`` makes rounded counts avoid,
then the mean throughput of those counts against the others per size. It is the
measurement behind that rule and its preference for multiples of 32: oneDNN's
direct convolutions on AVX-512 CPUs split output channels into blocks of 16 and
block those again by a divisor of their number; a prime number of blocks has none.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))


def gmacs(channels: int, size: int, kernel: int, runs: int) -> float:
    """GMAC/s of a ``channels`` -> ``channels`` convolution at ``size`` x ``size``."""
    import torch
    conv = torch.nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False).eval()
    x = torch.randn(1, channels, size, size)
    times = []
    with torch.no_grad():
        for i in range(runs + 3):
            t0 = time.perf_counter()
            conv(x)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return channels * channels * kernel * kernel * size * size / 1e9 / statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sizes', type=int, nargs='+', default=[128, 64, 32, 16])
    p.add_argument('--counts', type=int, nargs=3, default=[64, 520, 8],
                   metavar=('FIRST', 'LAST', 'STEP'))
    p.add_argument('--kernel', type=int, default=3)
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    p.add_argument('--runs', type=int, default=9)
    p.add_argument('--out', default=os.path.join(
        ROOT, 'benchmarks', 'results', f'channels_{time.strftime("%Y-%m-%d")}.json'))
    args = p.parse_args(argv)
    import torch

    from mmprune.checkpoint import atomic_write
    from mmprune.counts import slow_count as _slow_count
    if args.threads:
        torch.set_num_threads(args.threads)
    first, last, step = args.counts
    counts = list(range(first, last + 1, step))
    records, lines = [], []
    for size in args.sizes:
        rates = {c: gmacs(c, size, args.kernel, args.runs) for c in counts}
        slow = [rates[c] for c in counts if _slow_count(c)]
        other = [rates[c] for c in counts if not _slow_count(c)]
        records.append(dict(size=size, gmacs={str(c): round(r, 1) for c, r in rates.items()}))
        print(f'{args.kernel}x{args.kernel} conv at {size}x{size}, GMAC/s: ' + ' '.join(
            f'{c}:{r:.0f}{"P" if _slow_count(c) else ""}' for c, r in rates.items()), flush=True)
        lines.append(f'| {size}x{size} | {statistics.mean(slow):.1f} ({len(slow)}) | '
                     f'{statistics.mean(other):.1f} ({len(other)}) | '
                     f'{statistics.mean(slow) / statistics.mean(other):.2f} |'
                     if slow and other else f'| {size}x{size} | - | - | - |')
    text = '\n'.join([
        '| size | GMAC/s, prime count of 16-blocks (n) | GMAC/s, other counts (n) | ratio |',
        '|---|---|---|---|'] + lines)
    print(text)
    from speed import cpu_model
    info = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu_model=cpu_model(),
                cpu_capability=torch.backends.cpu.get_cpu_capability())
    atomic_write(args.out, lambda f: json.dump(dict(args=vars(args), machine=info,
                                                    records=records, table=text),
                                               open(f, 'w'), indent=1), overwrite=True)
    print(f'wrote {os.path.relpath(args.out)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
