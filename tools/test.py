"""``mmprune test``, run as ``python tools/test.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.test` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.test import main

if __name__ == '__main__':
    main()
