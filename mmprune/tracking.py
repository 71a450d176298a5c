"""Follow parameters through a pruning step, so training state can follow them.

torch-pruning replaces every parameter it prunes with a new ``nn.Parameter``
holding ``index_select`` of the old one (``BasePruningFunc._prune_parameter_and_grad``).
:func:`track_slices` records those selections, and the helpers below apply the
same selections to what a training run keeps beside the model: the
optimizer's state (momentum, Adam moments) and an EMA copy of the model.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from .tp_adapter import recording_parameter_pruning

#: a parameter's selections, in order: (dim, kept indices)
Slices = List[Tuple[int, List[int]]]


@contextlib.contextmanager
def track_slices() -> Iterator[Dict[int, Slices]]:
    """Record, per new parameter (by ``id``), the selections that produced it.

    A parameter pruned on two sides (input and output channels) gets two
    selections. The map is filled while the context is open; read it after.
    """
    made: Dict[int, Tuple[nn.Parameter, Slices]] = {}

    def record(weight, new, keep_idxs, pruning_dim):
        _, earlier = made.pop(id(weight), (None, []))
        made[id(new)] = (new, earlier + [(int(pruning_dim), [int(i) for i in keep_idxs])])

    result: Dict[int, Slices] = {}
    try:
        with recording_parameter_pruning(record):
            yield result
    finally:
        result.update({k: v for k, (_, v) in made.items()})


def slices_by_name(model: nn.Module, slices: Dict[int, Slices]) -> Dict[str, Slices]:
    """The recorded selections keyed by the model's parameter names."""
    return {name: slices[id(p)] for name, p in model.named_parameters() if id(p) in slices}


def apply_slices(tensor: torch.Tensor, slices: Slices) -> torch.Tensor:
    for dim, idxs in slices:
        tensor = tensor.index_select(dim, torch.as_tensor(idxs, device=tensor.device))
    return tensor


def remap_optimizer(optimizer: torch.optim.Optimizer, before: Dict[str, nn.Parameter],
                    model: nn.Module, plan: Dict[str, Slices]) -> Dict[str, int]:
    """Point ``optimizer`` at ``model``'s new parameters, in place.

    The param groups keep their order and hyper-parameters (so param
    schedulers stay valid); parameters of removed blocks leave their group, with their
    state. State of a pruned parameter is sliced with the
    same selections as the parameter; state of a parameter whose tensor was
    replaced at the same shape (a restored model) moves over unchanged; state
    that cannot be matched is reset (the optimizer starts that parameter
    afresh). Returns counts of each.
    """
    after = dict(model.named_parameters())
    swap: Dict[int, Tuple[nn.Parameter, nn.Parameter, Optional[Slices]]] = {}
    gone = {id(p) for n, p in before.items() if n not in after}  # in removed blocks
    for name, old in before.items():
        new = after.get(name)
        if new is not None and new is not old:
            swap[id(old)] = (old, new, plan.get(name))
    counts = dict(sliced=0, moved=0, reset=0, removed=0)
    for group in optimizer.param_groups:
        kept = [p for p in group['params'] if id(p) not in gone]
        for p in group['params']:
            if id(p) in gone:
                optimizer.state.pop(p, None)
                counts['removed'] += 1
        group['params'][:] = kept
        for i, p in enumerate(group['params']):
            if id(p) not in swap:
                continue
            old, new, ops = swap[id(p)]
            group['params'][i] = new
            state = optimizer.state.pop(old, None)
            if not state:
                continue
            if ops is None and new.shape == old.shape:
                optimizer.state[new] = state
                counts['moved'] += 1
            elif ops is not None and apply_slices(old.detach(), ops).shape == new.shape:
                optimizer.state[new] = {
                    k: apply_slices(v, ops) if torch.is_tensor(v) and v.shape == old.shape else v
                    for k, v in state.items()}
                counts['sliced'] += 1
            else:
                counts['reset'] += 1
    return counts


def slice_copy(copy: nn.Module, before: Dict[str, torch.Tensor], model: nn.Module,
               plan: Dict[str, Slices]) -> None:
    """Give ``copy`` (an EMA model already resized like ``model``) its own values,
    sliced like the model's: parameters with their selections, buffers of a
    norm layer with its weight's output selection; anything else that changed
    shape takes the model's current value."""
    own = copy.state_dict(keep_vars=True)
    ref = model.state_dict()
    with torch.no_grad():
        for name, t in own.items():
            old = before.get(name)
            if old is not None and old.shape == t.shape:
                t.copy_(old)
                continue
            owner, _, _ = name.rpartition('.')
            ops = plan.get(name) or [s for s in plan.get(f'{owner}.weight', []) if s[0] == 0]
            value = apply_slices(old, ops) if old is not None and ops else None
            if value is None or value.shape != t.shape:
                value = ref[name]
            t.copy_(value)
