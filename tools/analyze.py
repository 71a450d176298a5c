"""``mmprune analyze``, run as ``python tools/analyze.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.analyze` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.analyze import main

if __name__ == '__main__':
    main()
