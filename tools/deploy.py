"""``mmprune deploy``, run as ``python tools/deploy.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.deploy` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.deploy import main

if __name__ == '__main__':
    main()
