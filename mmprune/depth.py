"""Depth pruning: remove whole residual blocks, each becoming its skip path.

Channel pruning thins every layer, but the memory-bound work of a block (norms,
activations, attention's softmax, reshapes) shrinks only with the width, not its
square, so FLOPs fall faster than time. Removing a block removes all of its work.

**Which modules are blocks** is read from the model, not from a list of families:
one forward of what a deployed model runs (:func:`mmprune.tracing.inference_forward`)
records every call of every module that owns parameters, and the autograd graph is
walked back from the call's output through additions, ReLUs, clones and views only.
When that walk, passing at least one addition, reaches one of the call's inputs of the
output's shape, the module computes ``input + f(input)`` (up to a ReLU): a residual
block whose skip path is that input (ResNet / ResNeXt / Res2Net blocks, MobileNetV2
inverted residuals with a skip, CSP darknet bottlenecks, transformer layers of MiT,
Swin, PVT, ViT/BEiT, the attention and feed-forward sub-layers of post-norm DETR
layers). Nested blocks are offered at the outermost level, except a chain of blocks
(a ``Sequential`` of bottlenecks whose own parameters all lie in its blocks), whose
blocks are offered one by one.

A removed block is replaced by :class:`SkippedBlock` under the same name: the host's
code calls it as before, and it returns the input that carried the skip path. The
saved structure lists the removed blocks (``structure['removed']``), so a pruned
config rebuilds them the same way (:func:`mmprune.structure.apply_structure`).
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

from .tracing import flatten_tensors, inference_forward, tracing_state

#: autograd nodes a skip path may pass through: it stays the block's input up to a ReLU
#: (``relu(x + f(x))`` of ResNet, whose input is itself a ReLU output) and reshapes
SKIP_NODES = frozenset({'AddBackward0', 'AddBackward1', 'ReluBackward0', 'CloneBackward0',
                        'ViewBackward0', 'ReshapeAliasBackward0', 'UnsafeViewBackward0',
                        'AliasBackward0'})
ADD_NODES = frozenset({'AddBackward0', 'AddBackward1'})
#: how blocks are chosen: the change of the model's outputs when the block is skipped
#: (relative squared error, no labels needed), or the increase of its loss
BLOCK_CRITERIA = ('output', 'loss')


class SkippedBlock(nn.Module):
    """A removed residual block: returns the input its skip path carried.

    Args:
        input: the name of the block's forward argument that carried the skip path.
        position: its position among the positional arguments (None: keyword only).
        block: the removed block's class name (shown in the model's repr).
    """

    def __init__(self, input: str, position: Optional[int] = None, block: str = '') -> None:
        super().__init__()
        self.input, self.position, self.block = input, position, block

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get(self.input) is not None:
            return kwargs[self.input]
        if self.position is not None and self.position < len(args):
            return args[self.position]
        raise TypeError(f'removed block ({self.block}) called without its input '
                        f'{self.input!r}')

    def spec(self) -> Dict[str, Any]:
        """What rebuilds it (stored in a structure's ``removed``)."""
        return dict(input=self.input, position=self.position, block=self.block)

    def extra_repr(self) -> str:
        return f'removed {self.block}, returns {self.input!r}'


@dataclass
class Block:
    """A residual block of a model: where it is and what its skip path carries."""

    name: str
    input: str
    position: Optional[int]
    type: str
    params: int

    def skipped(self) -> SkippedBlock:
        return SkippedBlock(self.input, self.position, self.type)


def skipped_blocks(model: nn.Module) -> Dict[str, Dict[str, Any]]:
    """The blocks of ``model`` already removed, ``{name: SkippedBlock.spec()}``."""
    return {n: m.spec() for n, m in model.named_modules() if isinstance(m, SkippedBlock)}


def _skip_source(call: Tuple[tuple, dict, Any], signature: Optional[inspect.Signature]
                 ) -> Optional[Tuple[str, Optional[int]]]:
    """The (argument name, position) of the input the call's output is a skip of."""
    args, kwargs, out = call
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        return None
    inputs: List[Tuple[str, Optional[int], Any]] = []
    if signature is not None:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None:
            positional = [p.name for p in signature.parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            inputs = [(n, positional.index(n) if n in positional else None, v)
                      for n, v in bound.arguments.items()]
    if not inputs:
        inputs = [(f'arg{i}', i, v) for i, v in enumerate(args)]
    sources: Dict[Any, Tuple[str, Optional[int]]] = {}
    for name, position, value in inputs:
        if isinstance(value, torch.Tensor) and value.grad_fn is not None \
                and value.shape == out.shape:
            sources.setdefault(value.grad_fn, (name, position))
    # walk back through skip-path nodes; a source counts when an addition was passed
    stack, seen = [(out.grad_fn, False)], set()
    while stack:
        node, added = stack.pop()
        if node in sources and added:
            return sources[node]
        if node is None or (node, added) in seen or node.name() not in SKIP_NODES:
            continue
        seen.add((node, added))
        added = added or node.name() in ADD_NODES
        stack.extend((n, added) for n, _ in node.next_functions if n is not None)
    return None


def find_blocks(model: nn.Module, batch: Dict[str, Any],
                forward: Callable = inference_forward) -> List[Block]:
    """The residual blocks of ``model`` that can be removed, in module order.

    A module is one when every call of it in ``forward`` on ``batch`` returns one of
    its inputs plus its own work (see the module docstring).
    """
    calls: Dict[str, List[Tuple[tuple, dict, Any]]] = {}
    handles = []
    named = {n: m for n, m in model.named_modules()
             if n and any(True for _ in m.parameters()) and not isinstance(m, SkippedBlock)}
    for name, module in named.items():
        def hook(m, args, kwargs, out, name=name):
            calls.setdefault(name, []).append((args, kwargs, out))
        handles.append(module.register_forward_hook(hook, with_kwargs=True))
    try:
        with tracing_state(model):
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
    residual: Dict[str, Tuple[str, Optional[int]]] = {}
    for name, module_calls in calls.items():
        try:
            signature = inspect.signature(named[name].forward)
        except (TypeError, ValueError):
            signature = None
        sources = {_skip_source(c, signature) for c in module_calls}
        if len(sources) == 1 and None not in sources:
            residual[name] = sources.pop()
    calls.clear()  # the recorded outputs hold the autograd graph
    return _outermost(model, named, residual)


def _outermost(model: nn.Module, named: Dict[str, nn.Module],
               residual: Dict[str, Tuple[str, Optional[int]]]) -> List[Block]:
    """Residual modules that are not a chain of residual modules, outermost first."""
    def inside(name: str, outer: str) -> bool:
        return name.startswith(outer + '.')

    blocks: List[Block] = []
    for name, (arg, position) in residual.items():
        if not any(any(True for _ in c.parameters()) for c in named[name].children()):
            continue  # no layer of its own (a position embedding added to its input)
        inner = [n for n in residual if inside(n, name)]
        own = [p for pn, p in named[name].named_parameters()
               if not any(inside(f'{name}.{pn}', n) for n in inner)]
        if not own:  # a chain of blocks: its blocks are offered instead
            continue
        blocks.append(Block(name, arg, position, type(named[name]).__name__,
                            sum(p.numel() for p in named[name].parameters())))
    names = [b.name for b in blocks]
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted((b for b in blocks if not any(inside(b.name, o) for o in names)),
                  key=lambda b: order[b.name])


def _parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    owner, _, child = name.rpartition('.')
    return (model.get_submodule(owner) if owner else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` in place of the submodule ``name``; returns the old one."""
    parent, child = _parent(model, name)
    old = parent._modules[child]
    parent._modules[child] = new
    return old


def remove_blocks(model: nn.Module, blocks: Iterable[Block]) -> Dict[str, nn.Module]:
    """Replace each block by its :class:`SkippedBlock`; returns the removed modules
    (for :func:`put_back`)."""
    return {b.name: replace_module(model, b.name, b.skipped()) for b in blocks}


def put_back(model: nn.Module, removed: Dict[str, nn.Module]) -> None:
    """Undo :func:`remove_blocks`."""
    for name, module in removed.items():
        replace_module(model, name, module)


def empties_its_container(model: nn.Module, block: Block) -> bool:
    """Whether removing ``block`` would leave the module holding it with no layer: the
    last transformer layer of a MiT / Swin stage, say, whose stage would then be its
    patch embedding alone. (A ResNet or MobileNetV2 stage always keeps its first block,
    which changes the shape and is not removable.)"""
    parent, child = _parent(model, block.name)
    return not any(name != child and not isinstance(m, SkippedBlock)
                   and any(True for _ in m.parameters())
                   for name, m in parent.named_children())


def _outputs(model: nn.Module, batches: Sequence[Dict[str, Any]], criterion: str,
             forward: Callable) -> List[Any]:
    from .loss import loss_mode, model_loss
    results = []
    with torch.no_grad():
        for batch in batches:
            if criterion == 'loss':  # as gradient criteria take it: training outputs,
                with loss_mode(model):  # running BN statistics, a fixed dropout seed
                    results.append(float(model_loss(model, batch)))
            else:
                results.append([t.detach().float() for t in flatten_tensors(
                    forward(model, batch))])
    return results


def _change(dense: List[Any], now: List[Any], criterion: str) -> float:
    if criterion == 'loss':
        return sum(n - d for d, n in zip(dense, now)) / len(dense)
    errors = [float(((b - a) ** 2).sum() / (a ** 2).sum().clamp_min(1e-12))
              for d, n in zip(dense, now) for a, b in zip(d, n) if a.shape == b.shape]
    return sum(errors) / max(len(errors), 1)


def score_blocks(model: nn.Module, blocks: Sequence[Block],
                 batches: Sequence[Dict[str, Any]], criterion: str = 'output',
                 forward: Callable = inference_forward) -> Dict[str, float]:
    """How much the model changes when each block alone is skipped (higher: keep).

    ``'output'``: the outputs' squared error relative to their squared norm, averaged
    over outputs and batches; ``'loss'``: the increase of the loss (batches with
    ground truth). A block the host still runs after its replacement (held by a
    reference outside its parent) raises a ValueError naming it.
    """
    if criterion not in BLOCK_CRITERIA:
        raise ValueError(f'block_criterion must be one of {BLOCK_CRITERIA}, but got '
                         f'{criterion!r}')
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        dense = _outputs(model, batches, criterion, forward)
        scores = {}
        for block in blocks:
            scores[block.name] = _change(dense, _skipping(model, block, lambda: _outputs(
                model, batches, criterion, forward)), criterion)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return scores


def _skipping(model: nn.Module, block: Block, run: Callable[[], Any]) -> Any:
    """``run()`` with ``block`` removed; raises when the host still calls the block."""
    removed = remove_blocks(model, [block])
    called: List[bool] = []
    handle = removed[block.name].register_forward_pre_hook(lambda *_: called.append(True))
    try:
        out = run()
    finally:
        handle.remove()
        put_back(model, removed)
    if called:
        raise ValueError(f'block {block.name!r} ({block.type}) cannot be removed: the host '
                         f'still calls it after it is replaced (it is held outside its parent '
                         f'module)')
    return out


def select_blocks(model: nn.Module, request: Any, batch: Dict[str, Any],
                  batches: Sequence[Dict[str, Any]], criterion: str = 'output',
                  keep: Iterable[str] = ()) -> Tuple[List[Block], Dict[str, float]]:
    """The blocks a ``remove_blocks`` request names: a count, a fraction of the
    removable blocks, or a list of block names; with the scores they were chosen by.
    ``'auto'``: every removable block, least missed first (the caller removes them in
    that order until its latency target is met).

    A named module that is not a removable block is one ValueError saying why;
    blocks holding a layer of ``keep`` (``ignored_layers``) are never chosen.
    """
    found = find_blocks(model, batch)
    by_name = {b.name: b for b in found}
    if isinstance(request, (list, tuple)):
        blocks = [by_name.get(n) or _not_a_block(model, n, found) for n in request]
        for b in blocks:  # the host must not call it after removal
            _skipping(model, b, lambda: _outputs(model, batches[:1], 'output',
                                                 inference_forward))
        return blocks, {}
    keep = list(keep)
    free = [b for b in found if not any(k == b.name or k.startswith(b.name + '.')
                                        or b.name.startswith(k + '.') for k in keep)]
    count = len(free) if request == 'auto' else int(request) if isinstance(request, int) \
        else int(round(request * len(found)))
    if count > len(free):
        raise ValueError(f'remove_blocks={request!r} asks for {count} blocks, but '
                         f'{type(model).__name__} has {len(free)} removable ones'
                         f'{" outside ignored_layers" if keep else ""}: '
                         f'{[b.name for b in free][:8]}')
    scores = score_blocks(model, free, batches, criterion)
    chosen = sorted(free, key=lambda b: scores[b.name])[:count]
    if request == 'auto':
        print_log(f'[mmprune] {len(found)} removable blocks, least missed first: '
                  + ', '.join(f'{b.name} ({scores[b.name]:.3g})' for b in chosen),
                  logger='current', level=logging.INFO)
        return chosen, scores
    print_log(f'[mmprune] {len(found)} removable blocks; removing {count}: '
              + ', '.join(f'{b.name} ({scores[b.name]:.3g})' for b in chosen),
              logger='current', level=logging.INFO)
    return [b for b in found if b in chosen], scores


def _not_a_block(model: nn.Module, name: str, found: List[Block]) -> Block:
    named = dict(model.named_modules())
    if name not in named:
        raise ValueError(f'remove_blocks names {name!r}, which is not a module of '
                         f'{type(model).__name__}')
    near = [b.name for b in found if b.name.startswith(name + '.') or
            name.startswith(b.name + '.')][:4]
    raise ValueError(
        f'{name!r} ({type(named[name]).__name__}) cannot be removed: it is not a residual '
        f'block of the model (no skip path carries one of its inputs, of its output\'s shape, '
        f'around its work, or the inference forward does not run it)'
        + (f'; removable blocks near it: {near}' if near else
           f'; removable blocks: {[b.name for b in found][:6]}'))


def prepared(model: nn.Module, batch: Dict[str, Any], training: bool) -> Dict[str, Any]:
    """A dataloader's batch through the model's data preprocessor (a batch made by
    :func:`mmprune.tracing.make_batch` is already)."""
    if isinstance(batch.get('inputs'), torch.Tensor) and batch['inputs'].is_floating_point():
        return batch
    with torch.no_grad():
        return model.data_preprocessor(batch, training)
