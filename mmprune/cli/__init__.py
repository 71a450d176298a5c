"""``mmprune``: one command line over the tools.

    mmprune <command> [options]          (or: python -m mmprune <command> ...)

Each command is a module of this package with ``main(argv)``; the scripts in
the repository's ``tools/`` folder (``python tools/prune.py ...``, the way
OpenMMLab users run tools) call the same functions. A command module is
imported only when it runs, so ``mmprune --help`` is quick and a command that
needs onnxruntime or matplotlib does not burden the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: command -> (module under mmprune.cli, one-line help)
COMMANDS = {
    'prune': ('prune', 'one-shot prune of a config (+ checkpoint) into a pruned config + '
                       'checkpoint'),
    'train': ('train', 'prune while training with the host Runner (PruningHook), then compare'),
    'test': ('test', 'metric, params, FLOPs and latency of a model, side by side with another'),
    'analyze': ('analyze', 'params, FLOPs, latency and per-layer channels of a (pruned) model'),
    'sweep': ('sweep', 'prune to several sizes, finetune, evaluate: table and plot'),
    'sensitivity': ('sensitivity', 'prune one layer group at a time and rank the metric drops'),
    'deploy': ('deploy', 'end-to-end ONNX with mmdeploy, checked against PyTorch in ONNX '
                         'Runtime (metric, outputs, latency)'),
    'export': ('export', 'tensor-mode graph to ONNX, checked in onnxruntime'),
    'demo': ('demo', 'train, prune and compare a detector on drawn shapes (no downloads)'),
    'convert-mobilenetv2': ('convert_mobilenetv2', 'torchvision MobileNetV2 weights -> the '
                                                   'mmdet / mmseg backbone'),
    'configs': ('configs', 'list the configs packaged with mmprune and where they are'),
}


def command_module(name: str):
    """The module that implements ``mmprune <name>``."""
    return importlib.import_module(f'{__name__}.{COMMANDS[name][0]}')


def _parser() -> argparse.ArgumentParser:
    from mmprune import __version__
    p = argparse.ArgumentParser(
        prog='mmprune',
        description='Structural pruning of mmdet / mmseg models. '
                    '`mmprune <command> --help` shows a command\'s options.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='commands:\n' + '\n'.join(f'  {n:21s}{h}' for n, (_, h) in COMMANDS.items()))
    p.add_argument('--version', action='version', version=f'mmprune {__version__}')
    p.add_argument('command', choices=sorted(COMMANDS), metavar='command',
                   help='one of: ' + ', '.join(COMMANDS))
    return p


def run(argv: Optional[List[str]] = None):
    """Run ``mmprune <command> ...`` and return what the command returns (its summary)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0].startswith('-'):
        parser.parse_args(argv or ['--help'])  # --help / --version exit here
        return None
    # only the command is parsed here: its own parser reads the rest, help included
    args = parser.parse_args(argv[:1])
    return command_module(args.command).main(argv[1:])


def main(argv: Optional[List[str]] = None) -> int:
    """The console script: :func:`run`, then exit status 0 (errors raise or exit non-zero)."""
    run(argv)
    return 0


def block_request(values: Optional[List[str]]):
    """``--remove-blocks``: one count (``4``), one fraction (``0.25``), ``auto`` or block
    names."""
    if not values:
        return None
    if values == ['auto']:
        return 'auto'
    if len(values) == 1:
        for kind in (int, float):
            try:
                return kind(values[0])
            except ValueError:
                pass
    return list(values)


def add_block_flags(p: argparse.ArgumentParser) -> None:
    """The depth-pruning flags shared by ``prune`` and ``train``."""
    p.add_argument('--remove-blocks', nargs='+', metavar='N|FRACTION|auto|NAME',
                   help='remove whole residual blocks: a count, a fraction of the removable '
                        'ones, block names (see mmprune.depth), or auto (with '
                        '--target-latency: one at a time until the measured latency is met, '
                        'keeping those that buy time; the default there), or 0 (none: '
                        '--target-latency prunes the width alone)')
    p.add_argument('--block-criterion', choices=('output', 'loss'),
                   help='choose blocks by the output change (default) or loss increase when '
                        'skipped')

