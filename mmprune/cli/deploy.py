"""Deploy a (pruned) model to end-to-end ONNX with mmdeploy and check it in ONNX Runtime.

    mmprune deploy CONFIG CHECKPOINT --work-dir DIR [--shape H W] [--max-images N]

(``python tools/deploy.py`` takes the same arguments.) Writes ``DIR/end2end.onnx``
(post-processing inside the graph: a detector's NMS; a segmentor's logits, resized
to the image and argmaxed as mmseg does by mmprune's backend model), then
runs it in ONNX Runtime beside PyTorch: the predictions on the first test images,
the config's test metric on its test set (``--no-eval`` skips it) and the latency
per image, side by side; ``DIR/deploy_summary.json`` keeps them. Needs mmdeploy
1.3 (``bash tools/setup.sh --deploy``).
"""
from __future__ import annotations

import argparse
import os

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='mmprune deploy', description=__doc__.split('\n')[0])
    p.add_argument('config', help='model config, dense or pruned (path or mmdet::/mmseg::/'
                                  'mmprune:: name)')
    p.add_argument('checkpoint', help='its weights')
    p.add_argument('--work-dir', help='output folder (default work_dirs/<name>_deploy)')
    p.add_argument('--deploy-cfg', help='mmdeploy deploy config (default: the project\'s, '
                                        'configs/deploy/, by task)')
    p.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                   help='input size of a static export (segmentation; default: the '
                        'config\'s test resize)')
    p.add_argument('--num-images', type=int, default=5,
                   help='test images whose predictions are compared (default 5)')
    p.add_argument('--no-eval', action='store_true', help='skip the test-set metric')
    p.add_argument('--max-images', type=int, help='evaluate on the first N test images')
    p.add_argument('--latency-runs', type=int, default=10,
                   help='timed runs per model (default 10; 0 skips timing)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override model config settings, as in the host tools')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import mmprune  # noqa: F401 - registers mmprune.PrunedModel for the configs
    from mmprune.deploy import deploy, summary_lines
    name = os.path.splitext(os.path.basename(args.config.split('::')[-1]))[0]
    work_dir = args.work_dir or os.path.join('work_dirs', f'{name}_deploy')
    summary = deploy(args.config, args.checkpoint, work_dir, deploy_cfg=args.deploy_cfg,
                     shape=args.shape, num_images=args.num_images, evaluate=not args.no_eval,
                     max_images=args.max_images, latency_runs=args.latency_runs,
                     cfg_options=args.cfg_options)
    print('\n' + '\n'.join(summary_lines(summary)))
    return summary


if __name__ == '__main__':
    main()
