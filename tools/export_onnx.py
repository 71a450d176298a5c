"""``mmprune export``, run as ``python tools/export_onnx.py`` the way OpenMMLab tools are run.

The code is in :mod:`mmprune.cli.export` (its docstring and ``--help`` give the options).
"""
from mmprune.cli.export import main

if __name__ == '__main__':
    main()
