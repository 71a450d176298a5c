"""Evaluate a dense or pruned model (mAP / mIoU), optionally side by side with another.

    mmprune test CONFIG CHECKPOINT [--compare DENSE_CONFIG DENSE_CHECKPOINT]
        [--work-dir DIR] [--cfg-options ...] [--latency-runs 10]

(``python tools/test.py`` takes the same arguments.) The metric is the config's
own ``test_evaluator`` computed by the host Runner's ``test()``, exactly as the
host's packaged ``tools/test.py`` computes it. With ``--compare`` one table
shows, per model: the metric and its delta, params, FLOPs (MACs of the
inference forward at the test pipeline's size, the count ``prune()`` reports),
median CPU latency of that forward (and GPU latency when a GPU is present;
``--latency-runs 0`` skips the timing), and the checkpoint's size on disk
(:mod:`mmprune.evaluation`). A JSON summary goes to the work dir.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp

from mmprune.checkpoint import atomic_write
from mmprune.evaluation import evaluate, side_by_side_latency, table


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(prog='mmprune test', description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--compare', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                   help='a second model (usually the dense one) for the side-by-side table')
    p.add_argument('--work-dir', help='where logs and the JSON summary go')
    p.add_argument('--latency-runs', type=int, default=10,
                   help='timed runs (median); 0 skips the timing')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of both configs, as in the host tools')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    name = osp.splitext(osp.basename(args.config))[0]
    args.work_dir = args.work_dir or osp.join('work_dirs', f'test_{name}')
    opts = dict(cfg_options=args.cfg_options, latency_runs=args.latency_runs)
    rows = [dict(tag='model', **evaluate(args.config, args.checkpoint, args.work_dir, 'model',
                                         **opts))]
    if args.compare:
        rows[0]['tag'] = 'pruned'
        rows.append(dict(tag='dense', **evaluate(*args.compare, args.work_dir, 'dense', **opts)))
        side_by_side_latency(rows, args.cfg_options, args.latency_runs)
    text = table(rows)
    print('\n' + text)
    summary = dict(rows=rows, table=text)
    os.makedirs(args.work_dir, exist_ok=True)
    atomic_write(osp.join(args.work_dir, 'test_summary.json'),
                 lambda p: json.dump(summary, open(p, 'w'), indent=1), overwrite=True)
    return summary


if __name__ == '__main__':
    main()
