"""Sparse training: push channels towards zero before pruning them.

One key in a config::

    optim_wrapper = dict(
        constructor='mmprune.SparseOptimWrapperConstructor',
        optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
        sparsity=dict(mode='bn_scale', reg=1e-4))

The constructor builds the config's optimizer as usual and swaps the wrapper
for a sparse one (``OptimWrapper`` -> :class:`SparseOptimWrapper`,
``AmpOptimWrapper`` -> :class:`SparseAmpOptimWrapper`). Between backward and
the optimizer step it adds the gradient of a sparsity penalty:

* ``bn_scale`` (network slimming, Liu et al. 2017): ``reg * sign(gamma)`` on the
  scale of every BatchNorm / GroupNorm / SyncBN layer (L1 on the scales), so
  ``importance='bn_scale'`` later finds the channels it drove to zero;
* ``group`` (group lasso on output channels): ``reg * w_c / ||w_c||`` on each
  output channel ``w_c`` of every convolution, so whole filters shrink
  together and the magnitude criteria (``l1``, ``l2``, ``group_l2``) find them.

Under AMP the penalty is added to the unscaled gradients (after
``GradScaler.unscale_``), so its strength does not depend on the loss scale.
The layers are looked up at every step, so the penalty follows a model that a
:class:`~mmprune.hooks.PruningHook` has pruned meanwhile.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from mmengine.optim import AmpOptimWrapper, DefaultOptimWrapperConstructor, OptimWrapper

from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS

MODES = ('bn_scale', 'group')
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def check_sparsity(sparsity: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    sparsity = dict(sparsity or {})
    unknown = sorted(set(sparsity) - {'mode', 'reg'})
    if unknown:
        raise TypeError(f'sparsity got unknown key(s) {unknown}; known: mode, reg')
    mode = sparsity.setdefault('mode', 'bn_scale')
    reg = sparsity.setdefault('reg', 1e-4)
    if mode not in MODES:
        raise ValueError(f'sparsity mode must be one of {MODES}, but got {mode!r}')
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or reg < 0:
        raise ValueError(f'sparsity reg must be a non-negative number, but got {reg!r}')
    return sparsity


@torch.no_grad()
def add_sparsity_grad(model: nn.Module, mode: str, reg: float) -> int:
    """Add the penalty's gradient to ``model``'s gradients; returns how many tensors."""
    touched = 0
    for m in model.modules():
        if mode == 'bn_scale' and isinstance(m, _NORMS):
            w = getattr(m, 'weight', None)
            if w is not None and w.grad is not None:
                w.grad.add_(torch.sign(w), alpha=reg)
                touched += 1
        elif mode == 'group' and isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            if w.grad is not None:
                norms = w.flatten(1).norm(dim=1).clamp_min(1e-12)
                w.grad.add_(w / norms.view(-1, *([1] * (w.dim() - 1))), alpha=reg)
                touched += 1
    return touched


class _Sparse:
    """What both sparse wrappers share: the penalty and the model it reads."""

    model: Optional[nn.Module] = None

    def _setup(self, sparsity: Optional[Dict[str, Any]]) -> None:
        self.sparsity = check_sparsity(sparsity)
        self.model = None

    def bind(self, model: nn.Module) -> None:
        self.model = model

    def _penalise(self) -> None:
        if self.model is None:
            raise RuntimeError(f'{type(self).__name__} has no model: build it with '
                               f"constructor='mmprune.SparseOptimWrapperConstructor'")
        add_sparsity_grad(self.model, self.sparsity['mode'], float(self.sparsity['reg']))


@OPTIM_WRAPPERS.register_module()
class SparseOptimWrapper(_Sparse, OptimWrapper):
    """``OptimWrapper`` that adds a sparsity penalty's gradient before each step."""

    def __init__(self, optimizer, sparsity: Optional[Dict[str, Any]] = None, **kwargs) -> None:
        OptimWrapper.__init__(self, optimizer, **kwargs)
        self._setup(sparsity)

    def step(self, **kwargs) -> None:
        self._penalise()
        OptimWrapper.step(self, **kwargs)


@OPTIM_WRAPPERS.register_module()
class SparseAmpOptimWrapper(_Sparse, AmpOptimWrapper):
    """``AmpOptimWrapper`` that adds the penalty to the unscaled gradients."""

    def __init__(self, optimizer, sparsity: Optional[Dict[str, Any]] = None, **kwargs) -> None:
        AmpOptimWrapper.__init__(self, optimizer, **kwargs)
        self._setup(sparsity)

    def step(self, **kwargs) -> None:
        self.loss_scaler.unscale_(self.optimizer)  # at most once per step, so clip here too
        self._penalise()
        if self.clip_grad_kwargs:
            self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update_param)


_SPARSE_TYPES = {'OptimWrapper': 'mmprune.SparseOptimWrapper',
                 'AmpOptimWrapper': 'mmprune.SparseAmpOptimWrapper'}


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SparseOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """The default constructor, with the wrapper made sparse and bound to the model."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None) -> None:
        cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        sparsity = check_sparsity(cfg.pop('sparsity', None))
        kind = cfg.get('type', 'OptimWrapper')
        short = kind.split('.')[-1] if isinstance(kind, str) else getattr(kind, '__name__', '')
        if short in ('SparseOptimWrapper', 'SparseAmpOptimWrapper'):
            cfg['type'] = f'mmprune.{short}'
        elif short in _SPARSE_TYPES:
            cfg['type'] = _SPARSE_TYPES[short]
        else:
            raise ValueError(f'sparse training wraps OptimWrapper or AmpOptimWrapper, '
                             f'not {kind!r}')
        cfg['sparsity'] = sparsity
        super().__init__(cfg, paramwise_cfg)

    def __call__(self, model: nn.Module):
        wrapper = super().__call__(model)
        wrapper.bind(model.module if hasattr(model, 'module') else model)
        return wrapper


__all__ = ['SparseOptimWrapper', 'SparseAmpOptimWrapper', 'SparseOptimWrapperConstructor',
           'add_sparsity_grad']
