"""torch-pruning handlers for layers of mmcv that torch-pruning does not know.

Without a handler torch-pruning treats an unknown layer as element-wise (output
channels = input channels), which is wrong for mmcv's deformable convolutions.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch.nn as nn
from torch_pruning.pruner.function import BasePruningFunc


class DeformConvPruner(BasePruningFunc):
    """Prunes ``weight`` (out, in / groups, kh, kw) and ``bias`` of mmcv deformable convs."""

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


def _customized_pruners() -> Dict[type, BasePruningFunc]:
    pruners: Dict[type, BasePruningFunc] = {}
    try:
        from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
    except ImportError:  # pragma: no cover - mmcv without ops
        return pruners
    for cls in (DeformConv2d, ModulatedDeformConv2d):
        pruners[cls] = DeformConvPruner()
    return pruners


CUSTOMIZED_PRUNERS = _customized_pruners()


def pruner_of(module: nn.Module):
    """The handler of ``module`` if it is an mmcv layer handled here, else None."""
    for cls, pruner in CUSTOMIZED_PRUNERS.items():
        if isinstance(module, cls):
            return pruner
    return None


def customized_pruners_for(model: nn.Module) -> Dict[type, BasePruningFunc]:
    """Handlers keyed by the concrete classes present in ``model`` (subclasses included)."""
    found: Dict[type, BasePruningFunc] = {}
    for m in model.modules():
        pruner = pruner_of(m)
        if pruner is not None:
            found[type(m)] = pruner
    return found
