"""``mmprune demo``, run as ``python tools/demo.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.demo` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.demo import main

if __name__ == '__main__':
    main()
