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

Prune-then-finetune with no hook: give ``pruning`` (options of
:func:`mmprune.prune`, plus ``input_shape``) and the dense weights as
``checkpoint`` instead of ``structure``::

    model = dict(type='mmprune.PrunedModel', architecture='mmdet.RetinaNet',
                 checkpoint='dense.pth', pruning=dict(target_flops=0.5, input_shape=(512, 512)))

The model is pruned while it is built, before the Runner builds the optimizer
or a DDP wrapper, so the host's ``train.py`` finetunes it unchanged. Leave
``load_from`` unset (the dense weights no longer fit). The same config rebuilds
the same structure for the host's ``test.py`` / ``init_detector`` (every
criterion is deterministic given the weights and ``seed``), provided the dense
checkpoint is still there; ``tools/prune.py`` writes a config that needs none.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Union

import torch.nn as nn
from mmengine.registry import MODELS as ROOT_MODELS

from .registry import MODELS
from .structure import apply_structure, guard_loading


@MODELS.register_module(name='PrunedModel')
def build_pruned_model(architecture: Union[str, Dict[str, Any]],
                       structure: Optional[Dict[str, Any]] = None,
                       pruning: Optional[Dict[str, Any]] = None,
                       checkpoint: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Build ``architecture`` (a host model type or config) and apply ``structure``.

    Args:
        architecture: the host model type (``'mmdet.RetinaNet'``), whose
            arguments are the other keyword arguments, or a full model config.
        structure: the pruned structure (see :mod:`mmprune.structure`).
        pruning: prune while building instead, with these options of
            :func:`mmprune.prune` (and ``input_shape``).
        checkpoint: dense weights loaded before ``pruning``.
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
    if (structure is None) == (pruning is None):
        raise ValueError('PrunedModel needs either structure= (a pruned config) or pruning= '
                         '(prune while building), not both and not neither')
    if checkpoint is not None and pruning is None:
        raise ValueError('PrunedModel checkpoint= holds the dense weights for pruning=; the '
                         'weights of a pruned config load the usual way (load_from, init_detector)')
    if pruning is not None:  # options checked before the model is built
        from .options import PruneOptions
        PruneOptions.from_kwargs(**{k: v for k, v in dict(pruning).items()
                                    if k not in ('cfg', 'data', 'checkpoint')})
    model = ROOT_MODELS.build(arch)
    if structure is not None:
        dense = _shapes(model, structure)
        return guard_loading(apply_structure(model, structure), structure, dense)
    from mmengine.logging import print_log

    from .apis import quiet_init_weights, load_weights
    from .pruner import prune
    from .structure import structure_hash
    options = dict(pruning)
    if checkpoint is not None:
        load_weights(model, checkpoint)
        for m in model.modules():  # the Runner's init_weights must not overwrite them
            if hasattr(m, '_is_init'):
                m._is_init = True
    else:
        quiet_init_weights(model)
    dense_shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    result = prune(model, **options)
    guard_loading(model, result.structure, dense_shapes)
    print_log(f'[mmprune] PrunedModel built and pruned: structure '
              f'{structure_hash(result.structure)}; {result.summary()}', logger='current',
              level=logging.INFO)
    return model


def _shapes(model: nn.Module, structure: Dict[str, Any]) -> Dict[str, list]:
    tensors = model.state_dict(keep_vars=True)
    return {k: list(tensors[k].shape) for k in structure.get('shapes', {}) if k in tensors}
