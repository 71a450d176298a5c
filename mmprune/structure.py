"""The pruned architecture as plain, readable data.

A structure records, for every module that pruning changed, the attributes
that changed (``out_channels``, ``num_features``, ``normalized_shape``,
``embed_dim`` ...) and the new shapes of its parameters and buffers::

    {'version': 1,
     'layers': {'backbone.layer1.0.conv1': {'out_channels': 32},
                'backbone.layer1.0.bn1': {'num_features': 32}, ...},
     'shapes': {'backbone.layer1.0.conv1.weight': [32, 64, 1, 1], ...}}

It is plain JSON-able data, so it lives in a config file and in a checkpoint's
``meta``. Applying it to a freshly built host model resizes those tensors and
attributes (no tracing needed), after which the pruned weights load with the
host's own checkpoint loader.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

import torch
import torch.nn as nn

STRUCTURE_VERSION = 1
#: not structure: the train/eval mode, and activations' ``inplace``, which tracing turns off
#: for a while (:func:`mmprune.graph.tracing_state`; a restore between target_flops trials
#: must not turn it back on)
_SKIPPED_ATTRS = {'training', 'inplace'}


def _plain(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    if isinstance(value, (tuple, list, torch.Size)):
        return len(value) <= 16 and all(isinstance(v, (bool, int, float)) for v in value)
    return False


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list, torch.Size)) else value


def _attrs(module: nn.Module) -> Dict[str, Any]:
    return {k: v for k, v in vars(module).items()
            if not k.startswith('_') and k not in _SKIPPED_ATTRS and _plain(v)}


def snapshot(model: nn.Module) -> Dict[str, Any]:
    """Attributes of every module and shapes of every tensor, for a later :func:`diff`."""
    return dict(
        layers={name: _attrs(m) for name, m in model.named_modules(remove_duplicate=False)},
        shapes={name: list(t.shape) for name, t in model.state_dict(keep_vars=True).items()})


def diff(before: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """The structure of ``model`` relative to its :func:`snapshot` ``before``."""
    return structure_between(before, snapshot(model))


def structure_between(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """The structure that turns a model like snapshot ``before`` into ``after``."""
    layers: Dict[str, Dict[str, Any]] = {}
    for name, attrs in after['layers'].items():
        old = before['layers'].get(name, {})
        changed = {k: _jsonable(v) for k, v in attrs.items()
                   if k in old and _jsonable(old[k]) != _jsonable(v)}
        if changed:
            layers[name] = changed
    shapes = {name: shape for name, shape in after['shapes'].items()
              if before['shapes'].get(name) != shape}
    return dict(version=STRUCTURE_VERSION, layers=layers, shapes=shapes)


def is_empty(structure: Dict[str, Any]) -> bool:
    return not structure.get('layers') and not structure.get('shapes')


def structure_hash(structure: Dict[str, Any]) -> str:
    """A short stable hash, equal for equal structures (e.g. across DDP ranks)."""
    text = json.dumps(structure, sort_keys=True, separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def kept_channels(structure: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The channel attributes only (``*_channels``, ``*_features``), per layer."""
    keys = ('in_channels', 'out_channels', 'in_features', 'out_features', 'num_features',
            'num_channels', 'normalized_shape', 'embed_dim', 'embedding_dim')
    return {name: {k: v for k, v in attrs.items() if k in keys}
            for name, attrs in structure.get('layers', {}).items()
            if any(k in keys for k in attrs)}


def _check(model: nn.Module, structure: Dict[str, Any]) -> None:
    if not isinstance(structure, dict) or structure.get('version') != STRUCTURE_VERSION:
        raise ValueError(
            f'Not an mmprune structure (version {STRUCTURE_VERSION} expected): '
            f'{str(structure)[:120]}')
    modules = dict(model.named_modules(remove_duplicate=False))
    tensors = model.state_dict(keep_vars=True)
    missing: List[str] = [n for n in structure.get('layers', {}) if n not in modules]
    missing += [n for n in structure.get('shapes', {}) if n not in tensors]
    if missing:
        raise KeyError(
            f'The pruned structure does not match {type(model).__name__}: it names '
            f'{len(missing)} layer(s)/tensor(s) the model does not have, e.g. {missing[:5]}')
    for name, attrs in structure.get('layers', {}).items():
        unknown = [k for k in attrs if not hasattr(modules[name], k)]
        if unknown:
            raise KeyError(f'Layer {name!r} ({type(modules[name]).__name__}) has no '
                           f'attribute(s) {unknown} named by the pruned structure')


def apply_structure(model: nn.Module, structure: Dict[str, Any]) -> nn.Module:
    """Resize the layers of a freshly built host ``model`` to ``structure``, in place.

    Values of the resized tensors are left uninitialised: load the pruned
    checkpoint afterwards. Everything is checked before anything changes, so a
    structure that does not fit leaves the model as it was.
    """
    _check(model, structure)
    modules = dict(model.named_modules(remove_duplicate=False))
    for name, attrs in structure.get('layers', {}).items():
        module = modules[name]
        for key, value in attrs.items():
            old = getattr(module, key)
            if isinstance(old, tuple) and isinstance(value, list):
                value = tuple(value)
            elif isinstance(old, torch.Size):
                value = torch.Size(value)
            setattr(module, key, value)
    for name, shape in structure.get('shapes', {}).items():
        owner_name, _, attr = name.rpartition('.')
        owner = modules[owner_name]
        old = getattr(owner, attr)
        new = torch.empty(shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner._buffers[attr] = new
    return model
