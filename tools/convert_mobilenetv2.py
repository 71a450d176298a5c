"""``mmprune convert-mobilenetv2``, run as ``python tools/convert_mobilenetv2.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.convert_mobilenetv2` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.convert_mobilenetv2 import main

if __name__ == '__main__':
    main()
