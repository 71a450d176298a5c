"""What mmdeploy 1.3 needs to run on the stack mmprune is tested with (torch 2.9).

mmdeploy 1.3.1, OpenMMLab's deployer for mmdet 3.x and mmseg 1.x, predates
torch 2.9 and current onnx. Three things stand between them:

1. Installing: mmdeploy pins ``protobuf<=3.20.2``, which breaks ``import onnx``
   of current releases; its Python code never imports protobuf, so it is
   installed with ``--no-deps`` plus the small packages it does import
   (:data:`INSTALL`, ``bash tools/setup.sh --deploy``).
2. torch >= 2.9's ``torch.onnx.export`` uses the dynamo exporter by default
   (which needs onnxscript); mmdeploy's rewriters and symbolic functions hook
   the TorchScript exporter, so the export must ask for it (``dynamo=False``).
3. mmdeploy's RoIAlign symbolic (two-stage detectors) imports ``_cast_Long``
   from ``torch.onnx.symbolic_opset9``, which torch 2.9 no longer re-exports
   (it lives in the TorchScript exporter's own module).

2 and 3 are patched by :func:`export_patches`, only while an export runs, and
undone after; each patch applies only where the installed torch needs it.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from typing import Iterator

#: mmdeploy releases the deploy code is tested with (major, minor)
TESTED = ((1, 3),)
#: how to install mmdeploy beside current onnx (what ``tools/setup.sh --deploy`` runs)
INSTALL = ('pip install --no-deps "mmdeploy==1.3.1" && pip install aenum multiprocess grpcio '
           'prettytable terminaltables onnx onnxruntime  (or: bash tools/setup.sh --deploy)')


def require_mmdeploy():
    """Import mmdeploy (and onnxruntime), or one error saying what to install."""
    try:
        mmdeploy = importlib.import_module('mmdeploy')
    except ImportError as e:
        raise ImportError(f'mmprune deploy needs mmdeploy, which is not installed: '
                          f'{INSTALL}') from e
    version = tuple(int(p) for p in mmdeploy.__version__.split('.')[:2] if p.isdigit())
    if version not in TESTED:
        raise ImportError(f'mmdeploy {mmdeploy.__version__} is installed, but mmprune deploy is '
                          f'tested with mmdeploy 1.3 only: {INSTALL}')
    for module in ('mmdeploy.apis', 'onnx', 'onnxruntime'):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(f'mmdeploy {mmdeploy.__version__} is installed but {module} does '
                              f'not import ({e}); {INSTALL}') from e
    return mmdeploy


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """``torch.onnx.export`` with the TorchScript exporter, and ``_cast_Long`` where
    mmdeploy looks for it, while the block runs (see the module docstring)."""
    import torch.onnx
    import torch.onnx.symbolic_opset9 as opset9
    export = torch.onnx.export
    dynamo = inspect.signature(export).parameters.get('dynamo')
    added_cast = False
    try:
        if dynamo is not None and dynamo.default is not False:
            torch.onnx.export = functools.wraps(export)(functools.partial(export, dynamo=False))
        if not hasattr(opset9, '_cast_Long'):
            from torch.onnx._internal.torchscript_exporter import symbolic_opset9
            opset9._cast_Long = symbolic_opset9._cast_Long
            added_cast = True
        yield
    finally:
        torch.onnx.export = export
        if added_cast:
            del opset9._cast_Long
