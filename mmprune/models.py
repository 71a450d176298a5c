"""``mmprune.PrunedModel``: build a host model and give it a pruned structure.

A pruned config is a small delta on the dense config::

    _base_ = './retinanet_dense.py'
    model = dict(type='mmprune.PrunedModel', architecture='mmdet.RetinaNet',
                 structure={...})

Merged with the base, ``model`` keeps every host key (``backbone``, ``neck``,
``test_cfg`` ...) beside ``architecture`` and ``structure``, so host tools that
read or edit ``cfg.model.backbone`` keep working. ``architecture`` may also be
a complete host model config dict. What is built is the host model itself
(``RetinaNet``, ``EncoderDecoder`` ...): same class, same state_dict keys.
"""
from __future__ import annotations

from typing import Any, Dict, Union

import torch.nn as nn
from mmengine.registry import MODELS as ROOT_MODELS

from .registry import MODELS
from .structure import apply_structure


@MODELS.register_module(name='PrunedModel')
def build_pruned_model(architecture: Union[str, Dict[str, Any]], structure: Dict[str, Any],
                       **kwargs: Any) -> nn.Module:
    """Build ``architecture`` (a host model type or config) and apply ``structure``.

    Args:
        architecture: the host model type (``'mmdet.RetinaNet'``), whose
            arguments are the other keyword arguments, or a full model config.
        structure: the pruned structure (see :mod:`mmprune.structure`).
        **kwargs: arguments of the host model (``backbone``, ``neck`` ...).

    Returns:
        nn.Module: the host model with the pruned layer shapes; its weights are
        uninitialised where resized, to be filled by the pruned checkpoint.
    """
    if isinstance(architecture, str):
        arch = dict(type=architecture, **kwargs)
    elif isinstance(architecture, dict):
        arch = {**architecture, **kwargs}
    else:
        raise TypeError(f'architecture must be a model type or a config dict, '
                        f'but got {type(architecture).__name__}')
    model = ROOT_MODELS.build(arch)
    return apply_structure(model, structure)
