"""``mmprune sensitivity``, run as ``python tools/sensitivity.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.sensitivity` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.sensitivity import main

if __name__ == '__main__':
    main()
