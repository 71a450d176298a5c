"""The output layers: layers whose output channels are model outputs (class scores,
box regressions, segmentation logits), never pruned.

They are found by walking the autograd graph of a traced forward back from the
outputs, through channel-preserving ops and layers (activations, reshapes, norms,
depthwise convs), to the first channel-mixing layer (conv, linear, embedding).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, List, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from mmengine.logging import print_log

from ..custom_layers import custom_pruner_of, custom_pruners
from .forwards import tensor_forward


def layer_types() -> tuple:
    """The layer classes torch-pruning (and the registered custom handlers) prune."""
    classes = tuple(tp.ops.type2class(t) for t in tp.pruner.function.PrunerBox)
    return tuple(c for c in classes if isinstance(c, type)) + tuple(custom_pruners())


def layer_handler(module: nn.Module):
    """The torch-pruning handler that prunes ``module``, or None."""
    custom = custom_pruner_of(module)
    if custom is not None:
        return custom
    return tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))


def preserves_channels(module: nn.Module) -> bool:
    """True for layers whose output channels are their input channels (BN, LN, depthwise)."""
    if isinstance(module, nn.Embedding):
        return False
    pruner = layer_handler(module)
    if pruner is None:
        return True
    fn_out = getattr(type(pruner), 'prune_out_channels', None)
    fn_in = getattr(type(pruner), 'prune_in_channels', None)
    return fn_out is fn_in


def layers_behind(roots: Iterable[Any], made_by: Dict[Any, str],
                  through: Callable[[str], bool] = lambda name: False) -> List[str]:
    """Names of the layers met walking the autograd graph back from ``roots``.

    ``made_by`` maps a layer's output node to its name; the walk stops at a layer
    unless ``through(name)`` (a channel-preserving one). The layers are listed in the
    order met. Shared by :func:`find_output_layers` and :class:`mmprune.DistillHook`.
    """
    found: Dict[str, None] = {}
    stack, seen = list(roots), set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        name = made_by.get(fn)
        if name is not None:
            found[name] = None
            if not through(name):
                continue
        for nxt, _ in getattr(fn, 'next_functions', ()):
            if nxt is not None and 'AccumulateGrad' not in type(nxt).__name__:
                stack.append(nxt)
    return list(found)


def _reachable(roots: List[Any]) -> set:
    seen, stack = set(), list(roots)
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in getattr(fn, 'next_functions', ()))
    return seen


def _inputs_in_predict(model: nn.Module, batch: Dict[str, Any], wanted: set,
                       grad_fn_to_module: Dict[Any, nn.Module]) -> List[Any]:
    """Autograd nodes of the inputs of ``wanted`` layers in one ``mode='predict'`` run."""
    inputs: List[Any] = []

    def grab(module, args):
        inputs.extend(t.grad_fn for t in args[:1]
                      if isinstance(t, torch.Tensor) and t.grad_fn is not None)

    def record(module, args, output):
        if isinstance(output, tuple):
            output = output[0]
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            grad_fn_to_module[output.grad_fn] = module

    types = layer_types()
    handles = [m.register_forward_pre_hook(grab) for m in wanted]
    before = dict(grad_fn_to_module)
    handles += [m.register_forward_hook(record) for m in model.modules()
                if isinstance(m, types) and m not in wanted]
    try:
        model(batch['inputs'], batch['data_samples'], mode='predict')
    except Exception as e:  # noqa: BLE001 - only a hint; the untraced layers stay listed
        print_log(f'[mmprune] predict failed while looking for untraced layers: {e}',
                  logger='current', level=logging.WARNING)
        grad_fn_to_module.clear()
        grad_fn_to_module.update(before)
        return []
    finally:
        for h in handles:
            h.remove()
    return inputs


def _untraced_layers(model: nn.Module, batch: Dict[str, Any], kept: List[Any],
                     grad_fn_to_module: Dict[Any, nn.Module]) -> None:
    """Layers with weights the traced forward did not reach. Those only the predict
    path runs (HTC's semantic head) are found from one predict run: the layers feeding
    them keep their channels (their inputs go to ``kept``). The rest is reported."""
    named = dict(model.named_modules())
    traced = set(grad_fn_to_module.values())
    offsets = {id(m.conv_offset) for m in model.modules()
               if custom_pruner_of(m) is not None and hasattr(m, 'conv_offset')}
    types = layer_types()
    untraced = [n for n, m in model.named_modules()
                if isinstance(m, types) and m not in traced and id(m) not in offsets
                and any(True for _ in m.parameters(recurse=False))]
    if untraced:
        before = len(kept)
        kept += _inputs_in_predict(model, batch, {named[n] for n in untraced},
                                   grad_fn_to_module)
        if len(kept) > before:
            untraced = [n for n in untraced if named[n] not in grad_fn_to_module.values()]
    if untraced:
        print_log(f'[mmprune] {len(untraced)} layer(s) are not reached by the traced forward '
                  f'and are left as they are: {untraced[:8]}', logger='current',
                  level=logging.WARNING)


def find_output_layers(model: nn.Module, batch: Dict[str, Any],
                       forward: Callable = tensor_forward) -> Tuple[List[str], List[torch.Tensor]]:
    """Names of the layers whose output channels are model outputs, and the outputs.

    Runs ``forward`` once with hooks that map autograd nodes to layers, then
    walks back from every output tensor (and every feature a rule kept) with
    :func:`layers_behind`.
    """
    grad_fn_to_module: Dict[Any, nn.Module] = {}
    ran: Dict[nn.Module, Tuple[Any, List[Any]]] = {}  # module -> (output node, input nodes)

    def record(module, inputs, outputs):
        if isinstance(outputs, tuple):
            outputs = outputs[0]
        out_fn = outputs.grad_fn if isinstance(outputs, torch.Tensor) else None
        if out_fn is not None:
            grad_fn_to_module[out_fn] = module
        ran[module] = (out_fn, [t.grad_fn for t in inputs[:1]
                                if isinstance(t, torch.Tensor) and t.grad_fn is not None])

    types = layer_types()
    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, types)]
    kept: List[Any] = []
    try:
        outputs = forward(model, batch, kept)
    finally:
        for h in handles:
            h.remove()
    _untraced_layers(model, batch, kept, grad_fn_to_module)
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None] + kept
    # layers that ran but whose output reaches no output (it feeds a no-grad region, like
    # EMANet's bases update) are used where the graph cannot see: they keep their
    # channels, and so do the layers feeding them
    reachable = _reachable(stack)
    for out_fn, in_fns in ran.values():
        if out_fn not in reachable:
            stack += ([out_fn] if out_fn is not None else []) + in_fns
    names = {m: n for n, m in model.named_modules()}
    named = {n: m for m, n in names.items()}
    made_by = {fn: names[m] for fn, m in grad_fn_to_module.items()}
    return layers_behind(stack, made_by, lambda n: preserves_channels(named[n])), outputs
