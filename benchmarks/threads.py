"""How the thread setting moves a measured speed-up: one dense / pruned pair, timed again
and again under each OpenMP wait policy and thread count.

    python benchmarks/threads.py CONFIG [--checkpoint CKPT] [--shape 288 384]
                                 [--pruning-ratio 0.46] [--policies default PASSIVE ACTIVE]
                                 [--threads 2 1] [--repeats 5] [--runs 20]
                                 [--out benchmarks/results/threads_DATE.json]

Each setting runs in its own process (``OMP_WAIT_POLICY`` is read when OpenMP starts):
the model is built, a copy pruned at ``--pruning-ratio`` (the same channels in every
process: importance and example batch are seeded), and the two are timed ``--repeats``
times, ``--runs`` interleaved rounds each (the median per-round ratio, as
``target_latency`` measures). PyTorch wakes its OpenMP workers for every operator; on a
small VM what a wake-up costs differs by setting and over time, and it is paid per
operator, not per FLOP, so it moves the ratio of two models with the same operators and
different widths. A latency target holds for the setting it was measured with.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from landing import add_model_arguments, retime  # noqa: E402
from speed import add_run_options, apply_malloc, write_results  # noqa: E402


def child(args) -> dict:
    import copy

    import torch

    import mmprune
    from mmprune.tracing import make_batch
    torch.set_num_threads(args.child_threads)
    apply_malloc(args)
    dense, cfg = mmprune.build_model(args.config, args.checkpoint)
    dense.eval()
    model = copy.deepcopy(dense)
    mmprune.prune(model, args.pruning_ratio, cfg=cfg, input_shape=tuple(args.shape))
    model.eval()
    batch = make_batch(dense, cfg, tuple(args.shape))
    reps = [retime(dense, model, batch, args.runs) for _ in range(args.repeats)]
    return dict(policy=os.environ.get('OMP_WAIT_POLICY', 'default'),
                threads=torch.get_num_threads(), repeats=reps)


def table(records: list) -> str:
    def span(values, fmt):
        return f'{fmt(min(values))} - {fmt(max(values))}'
    lines = ['| OMP_WAIT_POLICY | threads | dense ms | pruned ms | ratio (each repeat) |',
             '|---|---|---|---|---|']
    for r in records:
        reps = r['repeats']
        lines.append(f'| {r["policy"]} | {r["threads"]} | '
                     f'{span([x["dense_ms"] for x in reps], lambda v: f"{v:.1f}")} | '
                     f'{span([x["pruned_ms"] for x in reps], lambda v: f"{v:.1f}")} | '
                     + ', '.join(f'{x["ratio"]:.3f}' for x in reps) + ' |')
    return '\n'.join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_arguments(p)
    p.add_argument('--pruning-ratio', type=float, default=0.46)
    p.add_argument('--policies', nargs='+', default=['default', 'PASSIVE', 'ACTIVE'])
    p.add_argument('--threads', type=int, nargs='+', default=[2, 1])
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--runs', type=int, default=20)
    p.add_argument('--child-threads', type=int, help=argparse.SUPPRESS)
    add_run_options(p, 'threads')
    args = p.parse_args(argv)
    if args.child_threads:  # one setting, in its own process
        print('RECORD ' + json.dumps(child(args)), flush=True)
        return 0
    records = []
    for policy in args.policies:
        for threads in args.threads:
            env = dict(os.environ)
            env.pop('OMP_WAIT_POLICY', None)
            if policy != 'default':
                env['OMP_WAIT_POLICY'] = policy
            cmd = [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]),
                   '--child-threads', str(threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith('RECORD ')), None)
            if line is None:
                raise SystemExit(f'{policy}, {threads} threads failed:\n{out.stderr[-2000:]}')
            records.append(json.loads(line[len('RECORD '):]))
            print(table(records[-1:]).splitlines()[-1], flush=True)
    write_results(args, table(records), records)
    return 0


if __name__ == '__main__':
    sys.exit(main())
