"""Small helpers on the nested outputs of host models (tensors in lists, tuples, dicts
and mmengine data elements), shared by tracing, timing and distillation."""
from __future__ import annotations

from typing import List, Optional

import torch


def flatten_tensors(obj) -> List[torch.Tensor]:
    """Every tensor in ``obj``, depth first."""
    out: List[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(flatten_tensors(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(flatten_tensors(v))
    elif hasattr(obj, 'to_dict') and callable(obj.to_dict):  # mmengine data elements
        out.extend(flatten_tensors(obj.to_dict()))
    return out


def first_tensor(obj) -> Optional[torch.Tensor]:
    """The first tensor of ``obj`` (a tensor, or lists / tuples of them), else None."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = first_tensor(v)
            if t is not None:
                return t
    return None


def channel_dim(t: torch.Tensor) -> int:
    """The channel dimension: 1 of a 4-D map, the last of tokens."""
    return 1 if t.dim() == 4 else t.dim() - 1


def detach_all(obj):
    """``obj`` with its tensors (also in lists / tuples) detached."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(detach_all(v) for v in obj)
    return obj
