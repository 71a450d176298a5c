"""Latency-aware allocation: which channels cost more time than their FLOPs say.

A channel saves the time of every layer that reads or writes it, and of the
layers that only pass it on (norms, activations, pooling). Convolutions take
time in proportion to their FLOPs; the element-wise layers around them take
time in proportion to the channels alone, and more of it at high resolution.
So at the same FLOPs, pruning the channels whose layers are slow for their
FLOPs saves more time.

:func:`layer_times` times every leaf module of the model's tensor-mode forward
(at the size the FLOPs are counted at) and gives the time of a layer that has
no weights of its own (ReLU, max pooling, dropout, upsampling modules) to the
layer whose output it reads, found by tensor storage. :func:`group_weights`
sums, for each group of coupled channels torch-pruning prunes together, the
time and the FLOPs of the layers the group touches, and returns each group's
time per FLOP relative to the model's: above 1, its channels cost more time
than their FLOPs say. ``prune(..., allocation='latency')`` prunes each group at
the ratio times its weight (capped), and searches the ratio for
``target_flops`` as before.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from .tracing import first_tensor, tensor_forward

#: weights are clipped to this range, so that no group is pruned at more than
#: twice (or less than half) the ratio of the others
WEIGHT_RANGE = (0.5, 2.0)


def _storage(t: Optional[torch.Tensor]) -> Optional[int]:
    if t is None:
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return None


def layer_times(model: nn.Module, batch: Dict[str, Any], runs: int = 2,
                forward=tensor_forward) -> Tuple[Dict[str, float], Dict[str, float]]:
    """Seconds per forward of each layer with weights: ``(own, after)``, its own
    time and that of the weightless leaf modules that read its output (directly
    or through other weightless ones). The fastest of ``runs`` timed forwards
    (``forward(model, batch)``: the pruner's graph by default;
    ``allocation='latency'`` passes the forward its FLOPs were counted on), after
    one warm-up.
    """
    owners = {n for n, m in model.named_modules()
              if any(True for _ in m.parameters(recurse=False))}
    leaves = {n: m for n, m in model.named_modules()
              if n and (n in owners or not any(True for _ in m.children()))}
    cuda = any(p.is_cuda for p in model.parameters())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    started: Dict[str, List[float]] = {}
    own: Dict[str, float] = {}
    after: Dict[str, float] = {}
    # storage -> (layer of owners that last wrote it, the tensor: kept alive so that
    # a later tensor cannot reuse the storage and be taken for this layer's output)
    written: Dict[int, Tuple[str, torch.Tensor]] = {}
    handles = []

    def pre(name):
        def hook(module, args):
            sync()
            started.setdefault(name, []).append(time.perf_counter())
        return hook

    def post(name):
        def hook(module, args, output):
            sync()
            dt = time.perf_counter() - started[name].pop()
            if name in owners:
                owner, spent = name, own
            else:  # a weightless layer: its time goes to the layer that wrote its input
                owner, spent = written.get(_storage(first_tensor(args)), (None, None))[0], after
            if owner is not None:
                spent[owner] = spent.get(owner, 0.0) + dt
                out = first_tensor(output)
                key = _storage(out)
                if key is not None:
                    written[key] = (owner, out)
        return hook

    for name, m in leaves.items():
        handles.append(m.register_forward_pre_hook(pre(name)))
        handles.append(m.register_forward_hook(post(name)))
    best: Tuple[Dict[str, float], Dict[str, float]] = ({}, {})
    try:
        with torch.no_grad():
            for i in range(runs + 1):
                own.clear()
                after.clear()
                forward(model, batch)
                written.clear()
                if i == 1:
                    best = (dict(own), dict(after))
                elif i > 1:
                    best = tuple({k: min(v, now.get(k, v)) for k, v in b.items()}
                                 for b, now in zip(best, (own, after)))
    finally:
        for h in handles:
            h.remove()
    return best


def group_weights(groups: Iterable[Tuple[str, List[Tuple[str, bool]]]],
                  times: Tuple[Dict[str, float], Dict[str, float]],
                  flops: Dict[str, float]) -> Dict[str, float]:
    """Each group's time per FLOP relative to all groups', clipped to :data:`WEIGHT_RANGE`.

    Args:
        groups: ``(root layer name, [(member layer name, prunes its outputs), ...])``.
        times: ``(own, after)`` seconds per layer (:func:`layer_times`); the
            time after a layer counts for the groups that prune its outputs.
        flops: MACs per layer.
    """
    own, after = times
    sums: Dict[str, Tuple[float, float]] = {}
    for root, members in groups:
        outputs = {name for name, out in members if out}
        t = f = 0.0
        for name in {name for name, _ in members}:
            t += own.get(name, 0.0) + (after.get(name, 0.0) if name in outputs else 0.0)
            f += flops.get(name, 0.0)
        sums[root] = (t, f)
    total_t = sum(t for t, _ in sums.values())
    total_f = sum(f for _, f in sums.values())
    lo, hi = WEIGHT_RANGE
    weights = {}
    for root, (t, f) in sums.items():
        if total_t <= 0 or total_f <= 0 or f <= 0:
            weights[root] = 1.0
        else:
            weights[root] = min(max((t / total_t) / (f / total_f), lo), hi)
    return weights


class LatencyAllocation:
    """Per-group weights of ``allocation='latency'``: each group's weight from
    :func:`group_weights`, computed on the first prune (of the model as given) and
    kept by the groups' root layer names for later trials of a ``target_flops``
    search. The pruner sets each group's ratio from them
    (:meth:`mmprune.tp_adapter.GroupPruner._allocate`)."""

    def __init__(self, times, flops: Dict[str, int]) -> None:
        self.times, self.flops = times, flops
        self.weights: Optional[Dict[str, float]] = None
        self.members: Dict[str, List[str]] = {}  # root -> layers whose outputs it prunes

    def weights_for(self, pruner, model: nn.Module
                    ) -> Tuple[Dict[str, float], Dict[str, List[str]]]:
        """``(weight per root layer, root -> layers whose outputs its group prunes)``."""
        if self.weights is None:
            groups = pruner.named_groups(model)
            self.members = {root: [n for n, out in members if out] for root, members in groups}
            self.weights = group_weights(groups, self.times, self.flops)
        return self.weights, self.members
