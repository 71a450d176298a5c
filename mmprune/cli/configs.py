"""List the configs packaged with mmprune and where they are.

    mmprune configs [PATTERN] [--path]

Prints the folder and the ``mmprune::`` names matching PATTERN (a glob, or a
substring: ``mmprune configs bccd``). mmprune's commands take these names as
they are; for a host tool or a ``_base_`` use the file path ``--path`` prints.
"""
from __future__ import annotations

import argparse

from mmprune.configs import config_path, configs_dir, list_configs


def main(argv=None) -> list:
    p = argparse.ArgumentParser(prog='mmprune configs', description=__doc__.split('\n')[0])
    p.add_argument('pattern', nargs='?', default='*', help='glob or substring of the path')
    p.add_argument('--path', action='store_true', help='print file paths instead of names')
    args = p.parse_args(argv)
    names = list_configs(args.pattern)
    print(f'# {configs_dir()}')
    for name in names:
        print(config_path(name) if args.path else name)
    if not names:
        raise SystemExit(f'no packaged config matches {args.pattern!r}')
    return names
