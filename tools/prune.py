"""``mmprune prune``, run as ``python tools/prune.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.prune` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.prune import main

if __name__ == '__main__':
    main()
