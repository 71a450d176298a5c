"""Criteria that score channels, by name, so configs can stay plain data.

``importance='l2'`` or ``importance=dict(type='taylor', group_reduction='max')``.
The plain names score a group by its root layer only (classic filter
pruning); the ``group_`` variants pool the score over every layer of the
coupled group (DepGraph's group-level importance).

Every name is an entry of :data:`mmprune.registry.IMPORTANCES`; a new criterion is
a function or class registered there that returns (or is) a torch-pruning
``Importance``, for example in a user's module named by ``custom_imports``::

    from mmprune.registry import IMPORTANCES
    import torch_pruning as tp

    @IMPORTANCES.register_module()
    class MeanAbs(tp.importance.GroupMagnitudeImportance):
        def __init__(self, **kwargs):
            super().__init__(p=1, group_reduction='mean', **kwargs)

after which ``importance='MeanAbs'`` works wherever a criterion is named. A
criterion that reads gradients of the loss subclasses torch-pruning's Taylor or
Hessian importance (or sets ``reads_gradients = True``); one that needs per-sample
gradients has ``accumulate_grad`` (as the Hessian one does).
"""
from __future__ import annotations

from typing import Any, Dict, List, Union

import torch_pruning as tp

from .registry import IMPORTANCES

_I = tp.importance


def _register(name: str, build) -> None:
    build.__name__ = build.__qualname__ = name
    IMPORTANCES.register_module(name=name, module=build)


def l1(**kw):
    """Filter pruning by the L1 norm of the root layer's weights."""
    return _I.GroupMagnitudeImportance(**{'p': 1, 'group_reduction': 'first', **kw})


def l2(**kw):
    """Filter pruning by the L2 norm of the root layer's weights."""
    return _I.GroupMagnitudeImportance(**{'p': 2, 'group_reduction': 'first', **kw})


def group_l1(**kw):
    """L1 norm pooled over every layer of the coupled group (DepGraph)."""
    return _I.GroupMagnitudeImportance(**{'p': 1, **kw})


def group_l2(**kw):
    """L2 norm pooled over every layer of the coupled group (DepGraph); the default."""
    return _I.GroupMagnitudeImportance(**{'p': 2, **kw})


def bn_scale(**kw):
    """The batch norm scales (network slimming)."""
    return _I.BNScaleImportance(**kw)


def lamp(**kw):
    """Layer-adaptive magnitude (LAMP)."""
    return _I.LAMPImportance(**kw)


def fpgm(**kw):
    """Distance to the geometric median of the layer's filters (FPGM)."""
    return _I.FPGMImportance(**kw)


def random(**kw):
    """Random scores: a baseline."""
    return _I.RandomImportance(**kw)


def taylor(**kw):
    """First-order Taylor expansion of the loss, root layer only."""
    return _I.GroupTaylorImportance(**{'group_reduction': 'first', **kw})


def group_taylor(**kw):
    """First-order Taylor expansion of the loss, pooled over the group."""
    return _I.GroupTaylorImportance(**kw)


def hessian(**kw):
    """Diagonal Hessian (per-sample squared gradients) of the loss, root layer only."""
    return _I.GroupHessianImportance(**{'group_reduction': 'first', **kw})


def group_hessian(**kw):
    """Diagonal Hessian of the loss, pooled over the group."""
    return _I.GroupHessianImportance(**kw)


for _build in (l1, l2, group_l1, group_l2, bn_scale, lamp, fpgm, random, taylor,
               group_taylor, hessian, group_hessian):
    _register(_build.__name__, _build)

#: the default criterion, chosen by measurement: at 50 % FLOPs under one finetune
#: budget it kept the most accuracy on BCCD and CamVid (docs/defaults.md, "Choosing the
#: defaults"; ``benchmarks/criteria.py``)
DEFAULT_IMPORTANCE = 'group_l2'


def importance_names() -> List[str]:
    """Every criterion name registered, the built-in ones and a user's."""
    return sorted(IMPORTANCES.module_dict)


def importance_name(spec: Union[str, Dict[str, Any]]) -> str:
    name = spec if isinstance(spec, str) else dict(spec).get('type')
    if not isinstance(name, str) or IMPORTANCES.get(name) is None:
        raise ValueError(
            f'Unknown importance {name!r}; choose one of {importance_names()} (or register '
            f'one in mmprune.registry.IMPORTANCES)')
    return name


def build_importance(spec: Union[str, Dict[str, Any]]):
    """Build a torch-pruning importance from a name or ``dict(type=name, **kwargs)``."""
    name = importance_name(spec)
    kwargs = {} if isinstance(spec, str) else {k: v for k, v in dict(spec).items() if k != 'type'}
    try:  # called directly: a build would look the name up in the default scope's registry
        imp = IMPORTANCES.get(name)(**kwargs)
    except TypeError as e:
        raise ValueError(f'Bad arguments {kwargs} for importance {name!r}: {e}') from e
    if not isinstance(imp, _I.Importance):
        raise TypeError(f'importance {name!r} built a {type(imp).__name__}, not a '
                        f'torch_pruning.importance.Importance')
    return imp


def reads_gradients(imp) -> bool:
    """Whether a built criterion scores from gradients of the model's loss: torch-pruning's
    Taylor and Hessian criteria and their subclasses, or one that says so with
    ``reads_gradients = True``."""
    default = isinstance(imp, (_I.GroupTaylorImportance, _I.GroupHessianImportance))
    return bool(getattr(imp, 'reads_gradients', default))


def per_sample_gradients(imp) -> bool:
    """Whether a criterion accumulates per-sample gradients (``accumulate_grad``)."""
    return callable(getattr(imp, 'accumulate_grad', None))
