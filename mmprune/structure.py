"""The pruned architecture as plain, readable data.

A structure records, for every module that pruning changed, the attributes
that changed (``out_channels``, ``num_features``, ``normalized_shape``,
``embed_dim`` ...) and the new shapes of its parameters and buffers::

    {'version': 1,
     'layers': {'backbone.layer1.0.conv1': {'out_channels': 32},
                'backbone.layer1.0.bn1': {'num_features': 32}, ...},
     'shapes': {'backbone.layer1.0.conv1.weight': [32, 64, 1, 1], ...}}

A prune that removes whole residual blocks (:mod:`mmprune.depth`) adds them, each with
the argument its skip path returns, and the structure is then version 2 (mmprune
versions that do not know removed blocks refuse it instead of ignoring them)::

    {'version': 2, 'removed': {'backbone.layer3.4': {'input': 'x', 'position': 0,
                                                     'block': 'Bottleneck'}}, ...}

It is plain JSON-able data, so it lives in a config file and in a checkpoint's
``meta``. Applying it to a freshly built host model resizes those tensors and
attributes (no tracing needed), after which the pruned weights load with the
host's own checkpoint loader.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn

STRUCTURE_VERSION = 1
#: a structure with removed blocks
DEPTH_VERSION = 2
VERSIONS = (STRUCTURE_VERSION, DEPTH_VERSION)
#: not structure: the train/eval mode, and activations' ``inplace``, which tracing turns off
#: for a while (:func:`mmprune.tracing.tracing_state`; a restore between target_flops trials
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
    """Attributes of every module, shapes of every tensor and the removed blocks, for a
    later :func:`diff`."""
    from .depth import skipped_blocks
    return dict(
        layers={name: _attrs(m) for name, m in model.named_modules(remove_duplicate=False)},
        shapes={name: list(t.shape) for name, t in model.state_dict(keep_vars=True).items()},
        removed=skipped_blocks(model))


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
    removed = {name: dict(spec) for name, spec in after.get('removed', {}).items()
               if name not in before.get('removed', {})}
    return _versioned(dict(layers=layers, shapes=shapes, removed=removed))


def _versioned(structure: Dict[str, Any]) -> Dict[str, Any]:
    """Version 1 without removed blocks (channel structures hash as before), else 2."""
    if not structure.get('removed'):
        structure.pop('removed', None)
        return dict(version=STRUCTURE_VERSION, **structure)
    return dict(version=DEPTH_VERSION, **structure)


def is_empty(structure: Dict[str, Any]) -> bool:
    return not structure.get('layers') and not structure.get('shapes') \
        and not structure.get('removed')


def removed_blocks(structure: Dict[str, Any]) -> List[str]:
    """The names of the blocks a structure removes."""
    return sorted(structure.get('removed', {}))


def compose(first: Dict[str, Any], then: Dict[str, Any]) -> Dict[str, Any]:
    """The structure of applying ``first`` and then ``then`` to a dense model."""
    layers = {k: dict(v) for k, v in first.get('layers', {}).items()}
    for name, attrs in then.get('layers', {}).items():
        layers.setdefault(name, {}).update(attrs)
    shapes = dict(first.get('shapes', {}))
    shapes.update(then.get('shapes', {}))
    removed = {k: dict(v) for k, v in first.get('removed', {}).items()}
    removed.update({k: dict(v) for k, v in then.get('removed', {}).items()})
    gone = tuple(f'{n}.' for n in removed)  # layers inside a removed block are no more
    layers = {k: v for k, v in layers.items() if not k.startswith(gone)}
    shapes = {k: v for k, v in shapes.items() if not k.startswith(gone)}
    return _versioned(dict(layers=layers, shapes=shapes, removed=removed))


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


def _check(model: nn.Module, structure: Dict[str, Any], edits: bool = True) -> None:
    if not isinstance(structure, dict) or structure.get('version') not in VERSIONS:
        raise ValueError(
            f'Not an mmprune structure (version {" or ".join(map(str, VERSIONS))} expected): '
            f'{str(structure)[:120]}')
    modules = dict(model.named_modules(remove_duplicate=False))
    tensors = model.state_dict(keep_vars=True)
    removed = structure.get('removed', {})
    if removed and structure['version'] != DEPTH_VERSION:
        raise ValueError(f'the pruned structure removes blocks but is version '
                         f'{structure["version"]}, not {DEPTH_VERSION}: was it edited?')
    for name, spec in removed.items():
        position = spec.get('position') if isinstance(spec, dict) else None
        if not (isinstance(spec, dict) and isinstance(spec.get('input'), str)
                and set(spec) <= {'input', 'position', 'block'}
                and (position is None or (isinstance(position, int) and position >= 0))):
            raise ValueError(f'the pruned structure removes block {name!r} with {spec!r}; '
                             f'expected {{"input": <argument name>, "position": <int or '
                             f'null>, "block": <class name>}}')
    missing: List[str] = [n for n in removed if n not in modules or not n]
    missing += [n for n in structure.get('layers', {}) if n not in modules]
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
        for key, value in attrs.items():
            if edits:
                _check_value(name, modules[name], key, value)
    if not edits:
        return
    for name, shape in structure.get('shapes', {}).items():
        if not (isinstance(shape, (list, tuple)) and len(shape) == tensors[name].dim() and all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise ValueError(f'the pruned structure gives tensor {name!r} the shape {shape!r}; '
                             f'expected {tensors[name].dim()} non-negative ints')
    _check_consistent(model, structure)


#: attributes pruning changes: channel, feature, dimension, head and group counts (PReLU's
#: ``num_parameters``, recurrent layers' sizes). Geometry
#: (kernel_size, stride, padding, dilation ...) and numerics (eps, momentum) never change, so
#: a structure naming them was edited, and applying it would silently change the outputs.
_PRUNABLE_ATTR = re.compile(r'^(groups|[kv]dim|normalized_shape|num_parameters|hidden_size'
                            r'|input_size)$|(^|_)(channels|features|dims?|heads)$')


def _check_value(name: str, module: nn.Module, key: str, value: Any) -> None:
    old = getattr(module, key)
    where = f'layer {name!r} ({type(module).__name__}) attribute {key!r}'
    if not _PRUNABLE_ATTR.search(key):
        raise ValueError(f'the pruned structure sets {where} = {value!r}, which pruning never '
                         f'changes (only channel, feature, dimension, head and group counts)')
    olds = list(old) if isinstance(old, (tuple, list, torch.Size)) else [old]
    news = list(value) if isinstance(value, (tuple, list)) else [value]
    counts = all(isinstance(v, int) and not isinstance(v, bool) for v in olds)
    if not counts or len(news) != len(olds) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v <= o
            for v, o in zip(news, olds)):
        what = 'a positive count' if len(olds) == 1 else f'{len(olds)} positive counts'
        raise ValueError(f'the pruned structure sets {where} = {value!r}; pruning keeps '
                         f'{what} no larger than the model\'s {old!r}')


def _check_consistent(model: nn.Module, structure: Dict[str, Any]) -> None:
    """The counts a structure gives torch layers must agree with its tensor shapes."""
    layers, shapes = structure.get('layers', {}), structure.get('shapes', {})
    touched = set(layers) | {n.rpartition('.')[0] for n in shapes}
    for name, module in model.named_modules(remove_duplicate=False):
        if name not in touched:
            continue
        attrs = {**vars(module), **layers.get(name, {})}

        def shape(tensor: str) -> Optional[List[int]]:
            t = getattr(module, tensor, None)
            key = f'{name}.{tensor}' if name else tensor
            return list(shapes[key]) if key in shapes else (
                list(t.shape) if isinstance(t, torch.Tensor) else None)

        weight, problems = shape('weight'), []
        if isinstance(module, nn.modules.conv._ConvNd) and weight:
            g = attrs['groups']
            out_c, in_c = ((weight[1] * g, weight[0]) if attrs.get('transposed')
                           else (weight[0], weight[1] * g))
            if (out_c, in_c) != (attrs['out_channels'], attrs['in_channels']):
                problems.append(f'out/in_channels {attrs["out_channels"]}/'
                                f'{attrs["in_channels"]} but weight {weight} (groups {g})')
        elif isinstance(module, nn.Linear) and weight:
            if weight != [attrs['out_features'], attrs['in_features']]:
                problems.append(f'out/in_features {attrs["out_features"]}/'
                                f'{attrs["in_features"]} but weight {weight}')
        elif isinstance(module, nn.modules.batchnorm._NormBase):
            for tensor in ('weight', 'running_mean'):
                got = shape(tensor)
                if got and got != [attrs['num_features']]:
                    problems.append(f'num_features {attrs["num_features"]} but {tensor} {got}')
        elif isinstance(module, nn.GroupNorm) and weight:
            if weight != [attrs['num_channels']] or attrs['num_channels'] % attrs['num_groups']:
                problems.append(f'num_channels {attrs["num_channels"]} (groups '
                                f'{attrs["num_groups"]}) but weight {weight}')
        elif isinstance(module, nn.LayerNorm) and weight:
            if weight != list(attrs['normalized_shape']):
                problems.append(f'normalized_shape {list(attrs["normalized_shape"])} but '
                                f'weight {weight}')
        if problems:
            raise ValueError(f'the pruned structure contradicts itself at layer {name!r} '
                             f'({type(module).__name__}): {problems[0]}; was it edited?')


def apply_structure(model: nn.Module, structure: Dict[str, Any],
                    check_edits: bool = True) -> nn.Module:
    """Resize the layers of a freshly built host ``model`` to ``structure``, in place.

    Values of the resized tensors are left uninitialised: load the pruned
    checkpoint afterwards. Everything is checked before anything changes, so a
    structure that does not fit leaves the model as it was: the layers and
    tensors it names, and (``check_edits``) that it only shrinks channel-like
    counts, as pruning does, consistently with the tensor shapes it gives.
    ``check_edits=False`` is for mmprune's own undo of a prune, which grows them.
    """
    _check(model, structure, check_edits)
    _remove(model, structure.get('removed', {}))
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


def _remove(model: nn.Module, removed: Dict[str, Dict[str, Any]]) -> None:
    """Replace the blocks a structure removes by their skip paths."""
    from .depth import SkippedBlock, replace_module
    for name, spec in removed.items():
        replace_module(model, name, SkippedBlock(**spec))


class LoadGuard:
    """``load_state_dict`` pre-hook of a pruned model: refuse weights that do not fit.

    Host loaders (mmengine's ``load_checkpoint`` behind ``init_detector``,
    ``init_model`` and a Runner's ``load_from``) load non-strictly: a tensor
    whose shape differs is skipped with a warning. On a model built from a
    pruned structure the skipped tensors are the resized ones, whose values
    are uninitialised, so a dense checkpoint would give a model that outputs
    NaN. This hook runs inside every loader (torch's and mmengine's both call
    the root module's ``_load_from_state_dict`` with the whole state dict) and
    raises instead, naming the file when a caller up the stack names it.

    Only the tensors pruning resized are guarded, against the model's current
    shapes; other mismatches (a new class count in a finetuned head) stay the
    host's business.
    """

    def __init__(self, model: nn.Module, structure: Dict[str, Any],
                 dense_shapes: Dict[str, List[int]]) -> None:
        self.names = set(structure.get('shapes', {}))
        self.removed = tuple(f'{n}.' for n in structure.get('removed', {}))
        self.dense_shapes = dense_shapes

    def __call__(self, module: nn.Module, state_dict: Dict[str, Any], prefix: str,
                 *args: Any) -> None:
        own = module.state_dict(keep_vars=True)
        bad = [(n, list(state_dict[prefix + n].shape), list(t.shape)) for n, t in own.items()
               if n in self.names and isinstance(state_dict.get(prefix + n), torch.Tensor)
               and tuple(state_dict[prefix + n].shape) != tuple(own[n].shape)]
        gone = [k for k in state_dict if k.startswith(prefix) and
                k[len(prefix):].startswith(self.removed)] if self.removed else []
        if gone and not bad:
            source = _loading_file()
            raise ValueError(
                f'{f"checkpoint {source}" if source else "the state dict"} does not fit the '
                f'pruned {type(module).__name__}: it holds {len(gone)} tensor(s) of blocks the '
                f'pruned structure removed, e.g. {gone[0]}; nothing was loaded. Its blocks are '
                f'the dense model\'s: a dense checkpoint loads with the dense config (the '
                f'pruned config\'s _base_), or is pruned with mmprune prune.')
        if not bad:
            return
        source = _loading_file()
        dense = all(self.dense_shapes.get(n) == got for n, got, _ in bad)
        hint = ('its shapes are the dense model\'s: a dense checkpoint loads with the dense '
                'config (the pruned config\'s _base_), or is pruned with mmprune prune'
                if dense else
                'load the checkpoint saved with this pruned config (mmprune prune writes '
                '<name>_pruned.pth beside <name>_pruned.py; a PruningHook run\'s checkpoints '
                'fit the _pruned.py written in its work_dir)')
        raise ValueError(
            f'{f"checkpoint {source}" if source else "the state dict"} does not fit the pruned '
            f'{type(module).__name__}: {len(bad)} pruned tensor(s) differ in shape, e.g. '
            + ', '.join(f'{n}: {tuple(got)} vs {tuple(want)}' for n, got, want in bad[:3])
            + f'; nothing was loaded. {hint[0].upper()}{hint[1:]}.')


def _loading_file() -> Optional[str]:
    """The checkpoint file a loader up the stack was given, if any (for the message)."""
    frame = sys._getframe(2)
    while frame is not None:
        for key in ('filename', 'checkpoint'):
            value = frame.f_locals.get(key)
            if isinstance(value, str) and frame.f_code.co_name in (
                    'load_checkpoint', '_load_checkpoint', 'init_detector', 'init_model',
                    'load_weights', 'resume'):
                return value
        frame = frame.f_back
    return None


def guard_loading(model: nn.Module, structure: Dict[str, Any],
                  dense_shapes: Dict[str, List[int]]) -> nn.Module:
    """Make ``model`` refuse checkpoints that do not fit ``structure`` (see :class:`LoadGuard`)."""
    register = getattr(model, 'register_load_state_dict_pre_hook', None)
    guard = LoadGuard(model, structure, dense_shapes)
    if register is not None:
        register(guard)
    else:  # pragma: no cover - torch < 2.1
        model._register_load_state_dict_pre_hook(guard, with_module=True)
    return model
