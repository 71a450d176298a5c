"""torch-pruning importance criteria by name, so configs can stay plain data.

``importance='l2'`` or ``importance=dict(type='taylor', group_reduction='max')``.
The plain names score a group by its root layer only (classic filter
pruning); the ``group_`` variants pool the score over every layer of the
coupled group (DepGraph's group-level importance).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Union

import torch_pruning as tp

_I = tp.importance

IMPORTANCES: Dict[str, Callable[..., Any]] = {
    'l1': lambda **kw: _I.GroupMagnitudeImportance(**{'p': 1, 'group_reduction': 'first', **kw}),
    'l2': lambda **kw: _I.GroupMagnitudeImportance(**{'p': 2, 'group_reduction': 'first', **kw}),
    'group_l1': lambda **kw: _I.GroupMagnitudeImportance(**{'p': 1, **kw}),
    'group_l2': lambda **kw: _I.GroupMagnitudeImportance(**{'p': 2, **kw}),
    'bn_scale': lambda **kw: _I.BNScaleImportance(**kw),
    'lamp': lambda **kw: _I.LAMPImportance(**kw),
    'fpgm': lambda **kw: _I.FPGMImportance(**kw),
    'random': lambda **kw: _I.RandomImportance(**kw),
    'taylor': lambda **kw: _I.GroupTaylorImportance(**{'group_reduction': 'first', **kw}),
    'group_taylor': lambda **kw: _I.GroupTaylorImportance(**kw),
    'hessian': lambda **kw: _I.GroupHessianImportance(**{'group_reduction': 'first', **kw}),
    'group_hessian': lambda **kw: _I.GroupHessianImportance(**kw),
}

#: the default criterion, chosen by measurement: at 50 % FLOPs under one finetune
#: budget it kept the most accuracy on BCCD and CamVid (docs/defaults.md, "Choosing the
#: defaults"; ``benchmarks/criteria.py``)
DEFAULT_IMPORTANCE = 'group_l2'

#: criteria that read gradients of the model's loss
GRADIENT_IMPORTANCES = {'taylor', 'group_taylor', 'hessian', 'group_hessian'}
#: criteria that accumulate per-sample gradients through ``accumulate_grad``
PER_SAMPLE_IMPORTANCES = {'hessian', 'group_hessian'}


def importance_name(spec: Union[str, Dict[str, Any]]) -> str:
    name = spec if isinstance(spec, str) else dict(spec).get('type')
    if name not in IMPORTANCES:
        raise ValueError(
            f'Unknown importance {name!r}; choose one of {sorted(IMPORTANCES)}')
    return name


def build_importance(spec: Union[str, Dict[str, Any]]):
    """Build a torch-pruning importance from a name or ``dict(type=name, **kwargs)``."""
    name = importance_name(spec)
    kwargs = {} if isinstance(spec, str) else {k: v for k, v in dict(spec).items() if k != 'type'}
    try:
        return IMPORTANCES[name](**kwargs)
    except TypeError as e:
        raise ValueError(f'Bad arguments {kwargs} for importance {name!r}: {e}') from e
