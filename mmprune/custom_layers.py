"""torch-pruning handlers for layers torch-pruning does not know.

Without a handler torch-pruning treats an unknown layer as element-wise (output
channels = input channels), which is wrong for mmcv's deformable convolutions.

Handlers are entries of :data:`mmprune.registry.LAYER_PRUNERS`: a subclass of
torch-pruning's ``BasePruningFunc`` whose ``layer_types`` names the layer classes it
prunes (classes, or ``'package.module.Class'`` strings for layers of optional
packages). A user's layer gets one the same way, from a module named by
``custom_imports``::

    from torch_pruning.pruner.function import BasePruningFunc
    from mmprune.registry import LAYER_PRUNERS

    @LAYER_PRUNERS.register_module()
    class MyConvPruner(BasePruningFunc):
        layer_types = ('my_package.layers.MyConv',)
        def prune_out_channels(self, layer, idxs): ...
        def prune_in_channels(self, layer, idxs): ...
        def get_out_channels(self, layer): ...
        def get_in_channels(self, layer): ...
"""
from __future__ import annotations

import importlib
from typing import Dict, Optional, Sequence

import torch.nn as nn
from torch_pruning.pruner.function import BasePruningFunc

from .registry import LAYER_PRUNERS


@LAYER_PRUNERS.register_module()
class DeformConvPruner(BasePruningFunc):
    """Prunes ``weight`` (out, in / groups, kh, kw) and ``bias`` of mmcv deformable convs;
    the *Pack variants' offset conv loses the same input channels."""

    layer_types = ('mmcv.ops.DeformConv2d', 'mmcv.ops.ModulatedDeformConv2d')

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.out_channels)) - set(int(i) for i in idxs))
        layer.out_channels = len(keep)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if getattr(layer, 'bias', None) is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        keep = sorted(set(range(layer.in_channels)) - set(int(i) for i in idxs))
        layer.in_channels = len(keep)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        offset = getattr(layer, 'conv_offset', None)
        if isinstance(offset, nn.Conv2d):  # the *Pack variants predict offsets from the input
            offset.in_channels = len(keep)
            offset.weight = self._prune_parameter_and_grad(offset.weight, keep, 1)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.in_channels

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return layer.groups

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return layer.groups


def _resolve(name_or_cls) -> Optional[type]:
    if isinstance(name_or_cls, type):
        return name_or_cls
    module, _, name = str(name_or_cls).rpartition('.')
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # an optional package (mmcv without ops)
        return None


_cache: Dict[tuple, Dict[type, BasePruningFunc]] = {}


def custom_pruners() -> Dict[type, BasePruningFunc]:
    """Every registered handler, keyed by the layer classes it prunes (one instance per
    handler class; built again only when the registry changes)."""
    key = tuple(LAYER_PRUNERS.module_dict.items())
    if key not in _cache:
        pruners: Dict[type, BasePruningFunc] = {}
        for handler_cls in LAYER_PRUNERS.module_dict.values():
            handler = handler_cls()
            for layer in getattr(handler_cls, 'layer_types', ()):
                cls = _resolve(layer)
                if cls is not None:
                    pruners[cls] = handler
        _cache.clear()
        _cache[key] = pruners
    return _cache[key]


def custom_pruner_of(module: nn.Module) -> Optional[BasePruningFunc]:
    """The registered handler of ``module`` (subclasses included), else None."""
    for cls, pruner in custom_pruners().items():
        if isinstance(module, cls):
            return pruner
    return None


def customized_pruners_for(model: nn.Module) -> Dict[type, BasePruningFunc]:
    """Handlers keyed by the concrete classes present in ``model`` (subclasses included),
    as torch-pruning's ``customized_pruners`` argument takes them."""
    found: Dict[type, BasePruningFunc] = {}
    for m in model.modules():
        pruner = custom_pruner_of(m)
        if pruner is not None:
            found[type(m)] = pruner
    return found
