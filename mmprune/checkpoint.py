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
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(_unreadable(path, e)) from e
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path} is not a checkpoint dict (got {type(ckpt).__name__})')
    return ckpt


def remove_stale_temporaries(path: str) -> None:
    """Remove the temporary files an interrupted :func:`atomic_write` of ``path`` left."""
    folder = os.path.dirname(os.path.abspath(path))
    suffix = '-' + os.path.basename(path)
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            if entry.startswith('.tmp-') and entry.endswith(suffix):
                os.remove(os.path.join(folder, entry))


def _unreadable(path: str, error: Exception) -> str:
    """Why ``path`` did not load, with advice that fits (torch's own hint to set
    ``weights_only=False`` is wrong for a file that is not a checkpoint at all)."""
    import zipfile
    size = os.path.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(2)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if size == 0:
        return f'checkpoint {path} is empty (0 bytes): an interrupted copy or save?'
    if zipfile.is_zipfile(path) or head[:1] == b'\x80' or head == b'PK':
        if isinstance(error, pickle.UnpicklingError) and 'weights_only' in str(error).lower():
            return (f'checkpoint {path} holds Python objects other than tensors and plain data, '
                    f'which loading with weights_only=True refuses ({first}). If you trust the '
                    f'file, re-save its state_dict with torch.save (tensors only).')
        return (f'checkpoint {path} ({size} bytes) could not be read ({type(error).__name__}: '
                f'{first}); the file looks truncated or damaged: copy or save it again')
    return (f'{path} is not a PyTorch checkpoint (it starts with {head!r}, neither a zip '
            f'archive nor a pickle); give the .pth file that torch.save or a Runner wrote')


def atomic_write(path: str, write: Callable[[str], None], overwrite: bool = False) -> str:
    """Write ``path`` through a temporary file in the same folder, then rename.

    A crash leaves either the old file or the new one, never a torn file; an
    existing file is only replaced when ``overwrite`` is set.
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f'{path} exists; pass overwrite=True (--overwrite) to replace it')
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
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
