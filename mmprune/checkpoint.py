"""Loading and writing checkpoints safely.

torch >= 2.6 loads with ``weights_only=True``. Checkpoints saved by mmengine's
Runner hold a few non-tensor types (the message hub's ``HistoryBuffer`` and
numpy arrays/scalars), which that loader refuses. Instead of turning the
protection off, :func:`allow_mmengine_types` adds exactly those types to
torch's allow-list. mmprune's own checkpoints hold only tensors and plain data.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Any, Callable, Dict

import torch


def _safe_types() -> list:
    import numpy as np
    from mmengine.logging import HistoryBuffer
    types: list = [HistoryBuffer, np.ndarray, np.dtype]
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    types += [_reconstruct, scalar]
    types += [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int8,
                                           np.int16, np.int32, np.int64, np.uint8, np.bool_)]
    return types


def _history_state(self) -> dict:
    """``HistoryBuffer.__getstate__`` without the statistics functions.

    mmengine pickles its class-level table of statistics functions into every
    buffer, as ``getattr(HistoryBuffer, 'min')``, which ``weights_only=True``
    refuses (allowing ``getattr`` would open every attribute of every allowed
    type). ``__setstate__`` restores the table from the class, so a checkpoint
    needs none of it.
    """
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


#: the only ``getattr`` a checkpoint may pickle: mmengine's default statistics
HISTORY_STATISTICS = ('min', 'max', 'current', 'mean')


def history_getattr(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` under ``weights_only=True``.

    Checkpoints that mmengine saved without mmprune imported pickle
    ``getattr(HistoryBuffer, 'min')`` (and max/current/mean). This resolves
    exactly those four and refuses anything else, so the safe loader reads
    the host's own checkpoints without allowing ``getattr`` in general.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and name in HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'refused getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) in a '
        f'checkpoint: only HistoryBuffer statistics {HISTORY_STATISTICS} are allowed')


def allow_mmengine_types() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine Runner checkpoints.

    Adds mmengine's few data types to torch's allow-list (and
    :func:`history_getattr` in place of ``getattr``), and makes the
    checkpoints saved from then on free of pickled functions (see
    :func:`_history_state`).
    """
    from mmengine.logging import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_state
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(_safe_types() + [(history_getattr, 'builtins.getattr')])


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """``torch.load`` on CPU with ``weights_only=True`` and the mmengine allow-list."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    allow_mmengine_types()
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path} is not a checkpoint dict (got {type(ckpt).__name__})')
    return ckpt


def atomic_write(path: str, write: Callable[[str], None], overwrite: bool = False) -> str:
    """Write ``path`` through a temporary file in the same folder, then rename.

    A crash leaves either the old file or the new one, never a torn file; an
    existing file is only replaced when ``overwrite`` is set.
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f'{path} exists; pass overwrite=True (--overwrite) to replace it')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the temporary name keeps the extension: writers such as Config.dump go by it
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix='-' + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
