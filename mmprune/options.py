"""The options of a prune, checked once, by one object.

:class:`PruneOptions` is what :func:`mmprune.prune`, :class:`mmprune.PruningHook`,
``PrunedModel(pruning=...)`` and the tools take: every option that changes the
result, checked without a model (one clear error each, before anything is built or
trained), and recorded in ``PruneResult.options`` and in a saved checkpoint's
summary. :func:`match_modules` and :func:`resolve_layers` resolve the layer names
and patterns of the options against a model.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn as nn

from .importance import DEFAULT_IMPORTANCE, build_importance

#: default ``round_to``: kept channel counts are multiples of 8, which measured faster
#: than exact counts on CPU (benchmarks/README.md, "Channel counts": 8 of 9 eager and 3
#: of 3 ONNX Runtime rows for RetinaNet / Faster / Mask R-CNN-R50). Layers narrower than
#: ``2 * round_to`` keep the exact count. ``round_to=None`` (or 1) gives exact counts.
DEFAULT_ROUND_TO: Optional[int] = 8
#: values of ``allocation``: the same ratio for every group, or ratios weighted by
#: each group's measured time per FLOP (:mod:`mmprune.latency`)
ALLOCATIONS = ('uniform', 'latency')


@dataclass
class PruneOptions:
    """Every option of a prune that changes its result.

    Args:
        pruning_ratio: fraction of channels removed from each prunable group.
        importance: criterion name (see :mod:`mmprune.importance`) or
            ``dict(type=name, **kwargs)``.
        target_flops: prune until FLOPs are this fraction of the dense FLOPs
            (within 2 %); overrides ``pruning_ratio``.
        global_pruning: rank channels across layers instead of per layer.
        pruning_ratio_dict: per-layer ratios, ``{name or glob pattern: ratio}``.
        max_pruning_ratio: cap on any layer's ratio under global pruning.
        round_to: keep channel counts multiples of this (see
            :class:`mmprune.counts.ChannelCounts`); ``None`` or 1 keeps exact counts.
        iterative_steps: prune in this many steps, re-scoring in between.
        ignored_layers: layer names or glob patterns never pruned, in addition
            to the output layers found from the graph.
        allocation: ``'uniform'`` prunes every group at ``pruning_ratio``;
            ``'latency'`` at the ratio times the group's measured time per FLOP
            relative to the model's (:mod:`mmprune.latency`).
        input_shape: (h, w) of the example input; the config's test resize when None.
        num_batches: batches used by gradient criteria.
        seed: seed of the synthetic inputs.
        fast_counts: among rounded counts, prefer those convolutions run fast at
            (:class:`mmprune.counts.ChannelCounts`); False takes the nearest multiple.
        fast_counts_from: ... for counts from this many channels.
        blocks_from: layers at least this wide keep whole 16-channel blocks; None: off.
        trace_side: short side of the example input the graph is traced at (a
            larger ``input_shape`` is scaled down to it: channel coupling does not
            depend on the image size; FLOPs are still counted at ``input_shape``);
            None traces at ``input_shape``.
        remove_blocks: whole residual blocks removed before the channels are pruned
            (:mod:`mmprune.depth`): a count, a fraction in (0, 1] of the removable
            blocks (1.0: all), a list of block names, or ``'auto'`` (with
            ``target_latency``: blocks go one at a time, least missed first, until the
            measured latency is the target, keeping only blocks that buy time; the width
            does the rest, if any); 0 removes none. None (the default): ``'auto'`` with
            ``target_latency``, none otherwise. At equal measured speed-up blocks first
            kept more accuracy than the width alone on three of the four BCCD / CamVid
            models at 1.5x and on all four at 2x, and on a GPU at batch 1 only blocks
            bought time; where blocks buy little time (Faster R-CNN-R50 on a CPU) the
            walk puts them back (docs/defaults.md).
        target_latency: prune until the measured latency is this fraction of the
            model's before the prune (within 5 %), timed interleaved with a copy of it
            on the model's device at ``input_shape``
            (:class:`mmprune.timing.LatencyRatio`); the width is searched after the
            ``remove_blocks`` go. Excludes ``target_flops``.
        latency_runs: timed forwards per model and trial of ``target_latency``, at
            least: a measurement also lasts ``LatencyRatio.min_seconds`` (2 s).
        block_criterion: how blocks are chosen, ``'output'`` (the change of the
            outputs when a block is skipped) or ``'loss'`` (the increase of the loss).
    """

    pruning_ratio: float = 0.5
    importance: Union[str, Dict[str, Any]] = DEFAULT_IMPORTANCE
    target_flops: Optional[float] = None
    global_pruning: bool = False
    pruning_ratio_dict: Optional[Dict[str, float]] = None
    max_pruning_ratio: float = 1.0
    round_to: Optional[int] = DEFAULT_ROUND_TO
    iterative_steps: int = 1
    ignored_layers: Sequence[str] = ()
    allocation: str = 'uniform'
    input_shape: Optional[Sequence[int]] = None
    num_batches: int = 2
    seed: int = 0
    fast_counts: bool = True
    fast_counts_from: int = 128
    blocks_from: Optional[int] = 128
    trace_side: Optional[int] = 256
    remove_blocks: Union[None, int, float, str, Sequence[str]] = None
    block_criterion: str = 'output'
    target_latency: Optional[float] = None
    latency_runs: int = 10

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> 'PruneOptions':
        """Options from keyword arguments; an unknown name is one clear error."""
        unknown = sorted(set(kwargs) - set(cls.names()))
        if unknown:
            raise TypeError(f'unknown pruning option(s) {unknown}; known: {sorted(cls.names())}')
        return cls(**kwargs)

    def __post_init__(self) -> None:
        self.pruning_ratio = _ratio('pruning_ratio', self.pruning_ratio)
        if self.target_flops is not None and not _number(self.target_flops, 0, 1, low_open=True):
            raise ValueError(f'target_flops must be a fraction in (0, 1], but got '
                             f'{self.target_flops!r}')
        if self.target_latency is not None:
            if not _number(self.target_latency, 0, 1, low_open=True):
                raise ValueError(f'target_latency must be a fraction in (0, 1], but got '
                                 f'{self.target_latency!r}')
            if self.target_flops is not None:
                raise ValueError('give target_flops or target_latency, not both')
        if not _number(self.max_pruning_ratio, 0, 1, low_open=True):
            raise ValueError(f'max_pruning_ratio must be in (0, 1], but got '
                             f'{self.max_pruning_ratio!r}')
        for name in ('iterative_steps', 'num_batches', 'latency_runs'):
            if not _int(getattr(self, name), 1):
                raise ValueError(f'{name} must be a positive int, but got {getattr(self, name)!r}')
        for name in ('round_to', 'blocks_from', 'trace_side'):
            if getattr(self, name) is not None and not _int(getattr(self, name), 1):
                raise ValueError(f'{name} must be a positive int or None, but got '
                                 f'{getattr(self, name)!r}')
        if not _int(self.fast_counts_from, 1):
            raise ValueError(f'fast_counts_from must be a positive int, but got '
                             f'{self.fast_counts_from!r}')
        if not _int(self.seed, 0):
            raise ValueError(f'seed must be a non-negative int, but got {self.seed!r}')
        for name in ('global_pruning', 'fast_counts'):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f'{name} must be True or False, but got {getattr(self, name)!r}')
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f'allocation must be one of {ALLOCATIONS}, but got '
                             f'{self.allocation!r}')
        if self.allocation != 'uniform' and self.global_pruning:
            raise ValueError(f'allocation={self.allocation!r} sets each group\'s ratio; it does '
                             f'not combine with global_pruning=True (one ranking across layers)')
        self.pruning_ratio_dict = {k: _ratio(f'pruning_ratio_dict[{k!r}]', v)
                                   for k, v in (self.pruning_ratio_dict or {}).items()} or None
        if isinstance(self.ignored_layers, str):
            self.ignored_layers = [self.ignored_layers]
        self.ignored_layers = list(self.ignored_layers)
        if self.remove_blocks is None and self.target_latency is not None:
            self.remove_blocks = 'auto'  # the default; 0 asks for the width alone
        self.remove_blocks = _block_request(self.remove_blocks)
        if self.remove_blocks == 'auto' and self.target_latency is None:
            raise ValueError("remove_blocks='auto' removes blocks until the measured latency "
                             "is target_latency; give target_latency (or a count, a fraction "
                             "or names of blocks)")
        from .depth import BLOCK_CRITERIA
        if self.block_criterion not in BLOCK_CRITERIA:
            raise ValueError(f'block_criterion must be one of {BLOCK_CRITERIA}, but got '
                             f'{self.block_criterion!r}')
        build_importance(self.importance)  # bad kwargs fail before anything is built

    def recorded(self) -> Dict[str, Any]:
        """The options as plain data, as ``PruneResult.options`` records them."""
        out = dataclasses.asdict(self)
        if out['input_shape'] is not None:
            out['input_shape'] = list(out['input_shape'])
        return out


def _number(value: Any, low: float, high: float, low_open: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (low < value if low_open else low <= value) and value <= high


def _int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _block_request(value: Any) -> Union[None, int, float, str, List[str]]:
    """``remove_blocks``: None, 0, a count, a fraction in (0, 1], ``'auto'`` or a list of
    names."""
    if value is None or (_int(value, 0) and value == 0):
        return value  # 0 stays 0: recorded options, read again, still mean "no blocks"
    if value == 'auto':
        return value
    if _int(value, 1):
        return value
    if _number(value, 0, 1, low_open=True) and isinstance(value, float):  # 1.0: all
        return value
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, str) and v for v in value):
        if len(set(value)) != len(value):
            raise ValueError(f'remove_blocks names a block twice: {list(value)}')
        return list(value)
    raise ValueError(f'remove_blocks must be a count of blocks, a fraction in (0, 1] of the '
                     f"removable ones, 'auto' or a list of block names, but got {value!r}")


def _ratio(name: str, value: Any) -> float:
    if not _number(value, 0, 1) or value == 1:
        raise ValueError(f'{name} must be a number in [0, 1), but got {value!r}')
    return float(value)


def match_modules(model: nn.Module, patterns: Union[str, Sequence[str]],
                  what: str) -> Dict[str, nn.Module]:
    """Modules whose names match any glob pattern; an unmatched pattern is an error."""
    if isinstance(patterns, str):
        patterns = [patterns]
    named = dict(model.named_modules())
    found: Dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [n for n in named if n and (n == pattern or fnmatch.fnmatchcase(n, pattern))]
        if not hits:
            close = [n for n in named if pattern.split('.')[0] in n][:3]
            raise KeyError(f'{what} {pattern!r} matches no layer of {type(model).__name__}'
                           + (f' (similar: {close})' if close else ''))
        for n in hits:
            found[n] = named[n]
    return found


def top_level(found: Dict[str, nn.Module]) -> Tuple[nn.Module, ...]:
    """The modules of ``found`` not inside another one of it."""
    names = sorted(found)
    tops = [n for n in names if not any(n.startswith(o + '.') for o in names if o != n)]
    return tuple(found[n] for n in tops)


def resolve_layers(model: nn.Module, options: PruneOptions
                   ) -> Tuple[Dict[str, nn.Module], Dict[str, Dict[str, nn.Module]]]:
    """``ignored_layers`` and the ``pruning_ratio_dict`` patterns matched in ``model``."""
    ignored = match_modules(model, options.ignored_layers, 'ignored_layers entry') \
        if options.ignored_layers else {}
    ratio_matches = {pattern: match_modules(model, pattern, 'pruning_ratio_dict key')
                     for pattern in options.pruning_ratio_dict or {}}
    return ignored, ratio_matches


def check_prunable(ratio_matches: Dict[str, Dict[str, nn.Module]],
                   keep: List[nn.Module], roots: tuple) -> None:
    """A per-layer ratio must name at least one layer whose channels can be pruned."""
    kept = {id(m) for k in keep for m in k.modules()}
    for pattern, found in ratio_matches.items():
        layers = {n: m for n, m in found.items() if isinstance(m, roots)}
        for name, m in found.items():
            layers.update({f'{name}.{n}': s for n, s in m.named_modules()
                           if n and isinstance(s, roots)})
        if not layers:
            raise ValueError(f'pruning_ratio_dict key {pattern!r} names no prunable layer '
                             f'(no conv or linear layer in {sorted(found)[:3]})')
        if all(id(m) in kept for m in layers.values()):
            raise ValueError(f'pruning_ratio_dict key {pattern!r} names only layers that are '
                             f'kept: {sorted(layers)[:3]} define the model outputs or are in '
                             f'ignored_layers')
