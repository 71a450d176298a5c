"""``mmprune train``, run as ``python tools/prune_train.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.train` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.train import main

if __name__ == '__main__':
    main()
