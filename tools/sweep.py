"""``mmprune sweep``, run as ``python tools/sweep.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.sweep` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.sweep import main

if __name__ == '__main__':
    main()
