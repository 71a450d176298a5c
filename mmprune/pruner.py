"""``prune()``: structural pruning of an mmdet / mmseg model with torch-pruning.

Example:
    >>> import mmprune
    >>> result = mmprune.prune('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    ...                        pruning_ratio=0.5, importance='group_l2', input_shape=(256, 256))
    >>> result.model          # still a mmdet RetinaNet, with fewer channels
    >>> result.structure      # plain data, see mmprune.structure

A prune traces the model once (:mod:`mmprune.tracing`: the dependency graph and the
output layers, kept whole), counts its FLOPs (:mod:`mmprune.flops`), prunes it with
torch-pruning (:mod:`mmprune.tp_adapter`) at ``pruning_ratio`` or at the ratio the
``target_flops`` search finds (:mod:`mmprune.search`), and checks that the pruned
model still computes its loss (:mod:`mmprune.loss`). Any failure restores the model.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import torch.nn as nn
from mmengine.logging import print_log

from .counts import ChannelCounts
from .custom_layers import customized_pruners_for
from .depth import prepared, remove_blocks, select_blocks
from .flops import FlopsCounter, count_flops_params, layer_flops, recording
from .importance import (DEFAULT_IMPORTANCE, build_importance, importance_name,
                         per_sample_gradients, reads_gradients)
from .latency import LatencyAllocation, layer_times
from .loss import accumulate_gradients, check_loss, one_value_norms, train_batches
from .options import PruneOptions, check_prunable, resolve_layers, top_level
from .search import (FLOPS_TOLERANCE, LATENCY_TOLERANCE, blocks_to_latency, restore_point,
                     search_flops, search_latency)
from .structure import diff, snapshot
from .timing import LatencyRatio
from .tp_adapter import GroupPruner, build_graph, group_error, torch_pruning_fixes
from .tracing import (PRUNABLE_ROOTS, TraceContext, attention_heads, attention_projections,
                      find_output_layers, follow_input_channels, make_batch, tensor_forward,
                      tracing_state)


@dataclass
class PruneResult:
    """What :func:`prune` returns. ``flops`` are MACs per image at the example input
    (torch-pruning's per-layer formulas, see :mod:`mmprune.flops`)."""

    model: nn.Module
    structure: Dict[str, Any]
    params: Tuple[int, int]
    flops: Tuple[int, int]
    output_layers: List[str] = field(default_factory=list)
    #: every option of the prune (:class:`mmprune.options.PruneOptions`), with the ratio
    #: a ``target_flops`` search found and ``input_shape`` as traced
    options: Dict[str, Any] = field(default_factory=dict)
    #: the forward ``flops`` were counted on: ``'inference_forward'`` (what a deployed
    #: model runs), or ``'tensor_forward'`` (the pruner's graph) where the host's
    #: tensor mode fails on the model
    flops_forward: str = 'inference_forward'
    #: the residual blocks removed (``remove_blocks``), each now its skip path
    removed_blocks: List[str] = field(default_factory=list)
    #: ms per forward before and after, measured interleaved (``target_latency`` only)
    latency: Optional[Tuple[float, float]] = None

    @property
    def flops_ratio(self) -> float:
        return self.flops[1] / max(self.flops[0], 1)

    @property
    def params_ratio(self) -> float:
        return self.params[1] / max(self.params[0], 1)

    def summary(self) -> str:
        return (f'params {self.params[0] / 1e6:.2f}M -> {self.params[1] / 1e6:.2f}M '
                f'({self.params_ratio:.1%}), FLOPs {self.flops[0] / 1e9:.2f}G -> '
                f'{self.flops[1] / 1e9:.2f}G ({self.flops_ratio:.1%})'
                + (f', {len(self.removed_blocks)} blocks removed' if self.removed_blocks else '')
                + (f', latency {self.latency[0]:.1f} -> {self.latency[1]:.1f} ms '
                   f'({self.latency[1] / self.latency[0]:.1%}, measured)' if self.latency
                   else ''))


def prune(model: Union[nn.Module, str, Any], pruning_ratio: float = 0.5,
          importance: Union[str, Dict[str, Any]] = DEFAULT_IMPORTANCE, *, cfg: Any = None,
          checkpoint: Optional[str] = None, data: Optional[Iterable[Dict[str, Any]]] = None,
          latency_reference: Optional[nn.Module] = None, **options: Any) -> PruneResult:
    """Prune the channels (and, with ``remove_blocks``, whole residual blocks) of an
    mmdet detector or mmseg segmentor in place.

    Args:
        model: a built host model, or a config (path, ``mmdet::``/``mmseg::``
            name, or :class:`mmengine.Config`) to build one from.
        pruning_ratio: fraction of channels removed from each prunable group.
            Defaults to 0.5.
        importance: criterion name (see :mod:`mmprune.importance`) or
            ``dict(type=name, **kwargs)``. Defaults to ``'group_l2'``.
        cfg: the config of a built ``model`` (example input size, dataloaders).
        checkpoint: dense weights to load when ``model`` is a config.
        data: batches (as given by a dataloader) for gradient criteria;
            synthetic batches with the model's loss are used when None.
        latency_reference: the model whose latency ``target_latency`` is a fraction of
            (on the same device; left untouched). By default a copy of ``model`` as given.
            :class:`~mmprune.hooks.PruningHook` passes the dense model, so that each of
            its steps measures against the dense latency rather than multiplying the
            steps' ratios, whose errors compound.
        **options: the other options of :class:`mmprune.options.PruneOptions`
            (``target_flops``, ``target_latency``, ``remove_blocks``, ``round_to``,
            ``ignored_layers``, ``pruning_ratio_dict``, ``global_pruning``, ``allocation``,
            ``input_shape`` ...), each checked
            before anything is built.

    Returns:
        PruneResult: the pruned model (same object when a model was given),
        its structure and the params/FLOPs before and after.
    """
    opts = PruneOptions.from_kwargs(pruning_ratio=pruning_ratio, importance=importance,
                                    **options)
    if not isinstance(model, nn.Module):
        from .apis import build_model
        model, cfg = build_model(model, checkpoint)
    cfg = cfg if cfg is not None else getattr(model, 'cfg', None)
    job = _Prune(model, cfg, opts, data, latency_reference)
    restore = restore_point(model)
    context = TraceContext()
    try:
        try:
            output_layers, flops0, params0, flops1, counted = job.attempt(context, restore)
        except RuntimeError as e:
            if not context.relaxed_token_maps:
                raise
            # a reshape of tokens to maps was let follow the pruned width, but some shape is
            # fixed elsewhere: prune again with the channels of such reshapes kept
            restore()
            print_log(f'[mmprune] pruning with token maps following the pruned width failed '
                      f'({type(e).__name__}: {str(e)[:160]}); pruning again with their '
                      f'channels kept', logger='current', level=logging.WARNING)
            context = TraceContext(strict_token_maps=True)
            output_layers, flops0, params0, flops1, counted = job.attempt(context, restore)
    except BaseException:
        restore()
        raise
    params1 = sum(p.numel() for p in model.parameters())
    result = PruneResult(model, diff(job.before, model), (params0, params1), (flops0, flops1),
                         output_layers, job.recorded, counted,
                         list(job.recorded.get('removed_blocks', [])), job.latency)
    print_log(f'[mmprune] {result.summary()}; kept output layers: {output_layers}',
              logger='current', level=logging.INFO)
    return result


class _Prune:
    """One prune of ``model`` with ``options``: what :func:`prune` runs (twice when the
    first attempt fails with token maps let through)."""

    def __init__(self, model: nn.Module, cfg, options: PruneOptions, data,
                 latency_reference: Optional[nn.Module] = None) -> None:
        self.model, self.cfg, self.options = model, cfg, options
        self.latency_reference = latency_reference
        #: the latency over the reference's, as ``remove_blocks='auto'`` left the model
        self.latency_now: Optional[float] = None
        self.ignored, self.ratio_matches = resolve_layers(model, options)
        self.ratio_dict = {top_level(self.ratio_matches[p]): r
                           for p, r in (options.pruning_ratio_dict or {}).items()}
        self.batch = make_batch(model, cfg, options.input_shape, seed=options.seed)
        if reads_gradients(build_importance(options.importance)) and data is None:
            data = train_batches(cfg, options.num_batches) or [
                make_batch(model, cfg, options.input_shape, seed=options.seed + 1 + i)
                for i in range(options.num_batches)]
        self.data = data
        self.recorded = options.recorded()
        self.recorded['input_shape'] = list(self.batch['inputs'].shape[-2:])
        self.counts = ChannelCounts.of(options)
        self.before = snapshot(model)
        self.meter: Optional[LatencyRatio] = None
        self.latency: Optional[Tuple[float, float]] = None

    def attempt(self, context: TraceContext, restore: Callable[[], None]):
        """Trace, count, prune and check; returns ``(output layers, dense FLOPs, dense
        params, pruned FLOPs, the forward counted)``."""
        model, cfg, opts = self.model, self.cfg, self.options
        h, w = self.recorded['input_shape']
        dense = None
        if opts.target_latency is not None:  # beside a copy of the model, or the reference
            self.meter = LatencyRatio(copy.deepcopy(model) if self.latency_reference is None
                                      else self.latency_reference, self.batch,
                                      opts.latency_runs)
        if opts.remove_blocks:  # 0 / None: none
            dense = self._remove_blocks()
            restore = restore_point(model)  # trials restore to the model without the blocks
        with tracing_state(model), follow_input_channels(model):
            _log(f'tracing {type(model).__name__} (example input {h}x{w}) and building the '
                 f'dependency graph')
            small, small_record, output_layers, built = self._trace(context)
            named = dict(model.named_modules())
            keep = list(self.ignored.values()) + [named[n] for n in output_layers] \
                + attention_projections(model)
            check_prunable(self.ratio_matches, keep, PRUNABLE_ROOTS)
            _log(f'{len(output_layers)} output layers kept; counting the FLOPs of the '
                 f'inference forward')
            counter = FlopsCounter(model, self.batch, small, small_record)
            flops0, params0 = dense or (counter.dense, sum(p.numel() for p in model.parameters()))
            if opts.allocation == 'latency':
                _log('timing every layer for allocation=\'latency\'')
            # time per FLOP of what a deployed model runs (a two-stage detector's RoI
            # align and head on 1000 proposals, no auxiliary heads), as the FLOPs count
            latency = LatencyAllocation(layer_times(model, self.batch, forward=counter.forward),
                                        layer_flops(model, counter.full)) \
                if opts.allocation == 'latency' else None
            trial = _Trial(self, small, keep, built, context, counter, latency, flops0)
            flops1 = self._reach(trial, restore, counter, flops0)
            if self.meter is not None:  # the result's speed, with twice the runs
                frac = self.meter(model, 2 * opts.latency_runs)
                self.latency = (self.meter.last['reference'], self.meter.last['model'])
                self.recorded['latency_ratio'] = round(frac, 4)
                _log(f'latency {self.latency[0]:.1f} -> {self.latency[1]:.1f} ms ({frac:.1%}),'
                     f' measured interleaved')
                self.meter = None  # the copy is no longer needed
            _log('checking that the pruned model still computes its loss')
            check_loss(model, cfg, small, opts.seed,
                       2 if one_value_norms(model, counter.small_dense or counter.full) else 1)
            for p in model.parameters():
                p.grad = None
        return output_layers, flops0, params0, flops1, counter.forward.__name__

    def _remove_blocks(self) -> Tuple[int, int]:
        """Remove the residual blocks ``remove_blocks`` asks for; returns the dense
        model's (FLOPs, params)."""
        model, opts = self.model, self.options
        with tracing_state(model):  # eval mode, as every count
            flops, params = count_flops_params(model, self.batch)
        _log(f'finding residual blocks and choosing by the {opts.block_criterion!r} criterion')
        training = opts.block_criterion == 'loss'
        if isinstance(opts.remove_blocks, list):  # named: nothing to score, one check run
            batches = [self.batch]
        else:
            batches = self.data if self.data is not None else train_batches(
                self.cfg, opts.num_batches)
        # batches of the train dataloader go through the preprocessor as in training (an
        # mmseg one pads crops smaller than its size only then, and refuses them otherwise)
        batches = [prepared(model, b, True) for b in batches] if batches else [
            make_batch(model, self.cfg, self.options.input_shape, training=training,
                       seed=opts.seed + 1 + i) for i in range(opts.num_batches)]
        blocks, _ = select_blocks(model, opts.remove_blocks, self.batch, batches,
                                  opts.block_criterion, keep=list(self.ignored))
        if opts.remove_blocks == 'auto':  # one at a time until the latency is met
            def now_flops() -> int:
                with tracing_state(model):
                    return count_flops_params(model, self.batch)[0]
            blocks, self.latency_now = blocks_to_latency(
                model, blocks, lambda: self.meter(model), float(opts.target_latency),
                flops=now_flops)
        else:
            remove_blocks(model, blocks)
        self.recorded['removed_blocks'] = [b.name for b in blocks]
        return flops, params

    def _trace(self, context: TraceContext):
        """The output layers and the dependency graph, from one forward at the small
        tracing size (or at full size, where the model does not run smaller)."""
        model, batch = self.model, self.batch
        small = _trace_batch(model, self.cfg, batch, self.options.seed, self.options.trace_side)
        built: List[Any] = []  # the dependency graph, built from the same forward
        try:
            with recording(model) as small_record:  # the dense shapes at the small size
                output_layers, _ = find_output_layers(model, small, _building(built, context))
        except Exception:  # the model does not run at the smaller size: trace at full size
            if small is batch:
                raise
            small, small_record = batch, None
            built.clear()
            output_layers, _ = find_output_layers(model, batch, _building(built, context))
        return small, small_record, output_layers, built

    def _reach(self, trial: '_Trial', restore, counter: FlopsCounter, flops0: int) -> int:
        """Prune at ``pruning_ratio``, or search the ratio of ``target_flops``."""
        opts = self.options
        if opts.target_latency is not None:
            return self._reach_latency(trial, restore, counter)
        if opts.target_flops is None:
            return trial(opts.pruning_ratio) if opts.pruning_ratio > 0 or self.ratio_dict \
                else counter.dense
        now = counter.dense  # below flops0 when blocks were removed
        if opts.target_flops >= 1 or now <= flops0 * opts.target_flops * (1 + FLOPS_TOLERANCE):
            # the dense model (or the one without the removed blocks) meets the target
            self.recorded.update(pruning_ratio=0.0)
            if now < flops0 * opts.target_flops * (1 - FLOPS_TOLERANCE):
                print_log(f'[mmprune] removing the blocks left {now / flops0:.1%} of the '
                          f'dense FLOPs, below target_flops={opts.target_flops}; no channels '
                          f'pruned', logger='current', level=logging.WARNING)
            return now
        self.recorded.update(search_flops(
            trial, restore, self.model, flops0, float(opts.target_flops),
            opts.max_pruning_ratio, rounded=bool(opts.round_to) and opts.round_to > 1,
            start=now / flops0))
        return counter.count(self.model)

    def _reach_latency(self, trial: '_Trial', restore, counter: FlopsCounter) -> int:
        """Prune the width until the measured latency is ``target_latency``."""
        opts, target = self.options, float(self.options.target_latency)
        now = self.meter(self.model) if self.latency_now is None else self.latency_now
        of = 'the model before this prune' if self.latency_reference is None \
            else 'the reference'
        _log(f'latency {now:.1%} of {of}'
             + (' (blocks removed)' if self.recorded.get('removed_blocks') else ''))
        if now <= target * (1 + LATENCY_TOLERANCE):
            self.recorded.update(pruning_ratio=0.0)
            return counter.dense
        self.recorded.update(search_latency(trial, restore, lambda: self.meter(self.model),
                                            target, opts.max_pruning_ratio, now,
                                            dense_flops=trial.flops0, of=of))
        return counter.count(self.model)


class _Trial:
    """Prune the model (as it is) at one ratio and count its FLOPs: a call is one trial of
    the ``target_flops`` search (``refine``: a global-ranking step after a uniform one;
    ``exact``: without rounding)."""

    def __init__(self, job: _Prune, small, keep, built, context, counter, latency,
                 flops0: int) -> None:
        self.job, self.small, self.keep, self.built = job, small, keep, built
        self.context, self.counter, self.latency, self.flops0 = context, counter, latency, flops0

    def __call__(self, ratio: float, refine: bool = False, exact: bool = False) -> int:
        job, opts = self.job, self.job.options
        _prune_steps(job.model, self.small, opts.importance, ratio, self.keep,
                     None if refine else job.ratio_dict, job.data, opts.num_batches,
                     graph=self.built.pop() if self.built else None, context=self.context,
                     counts=job.counts, latency=None if refine else self.latency,
                     global_pruning=opts.global_pruning or refine,
                     max_pruning_ratio=opts.max_pruning_ratio,
                     round_to=None if exact else opts.round_to,
                     iterative_steps=1 if refine else opts.iterative_steps)
        try:  # the counting forward also lets follow_input_channels see the new channels
            flops = self.counter.count(job.model)
        except Exception as e:
            h, w = self.counter.shape
            raise RuntimeError(
                f'the pruned model fails its forward at {h}x{w} ({type(e).__name__}: '
                f'{e}); the model is restored. Prune less (a lower ratio, or round_to '
                f'keeping several channels per norm group), or give a larger '
                f'input_shape.') from e
        what = 'global-ranking refinement' if refine else 'ratio'
        target = opts.target_flops
        _log(f'{what} {ratio:.4f}{" (exact channel counts)" if exact else ""}: '
             f'FLOPs {flops / self.flops0:.1%} of dense'
             + (f' (target {float(target):.1%})' if target is not None else ''))
        return flops


def _log(message: str) -> None:
    """One stage of :func:`prune` to mmengine's current logger (a prune of an R50
    model takes tens of seconds, a ``target_flops`` search several trials)."""
    print_log(f'[mmprune] {message}', logger='current', level=logging.INFO)


def _trace_batch(model: nn.Module, cfg, batch: Dict[str, Any], seed: int,
                 side: Optional[int]) -> Dict[str, Any]:
    """``batch`` scaled down to ``side`` (sides rounded up to multiples of 32, the
    largest common backbone stride), or ``batch`` itself when small."""
    h, w = batch['inputs'].shape[-2:]
    if side is None or min(h, w) <= side:
        return batch
    scale = side / min(h, w)
    shape = tuple(int(math.ceil(s * scale / 32) * 32) for s in (h, w))
    return make_batch(model, cfg, shape, seed=seed)


def _building(built: List[Any], context: TraceContext) -> Callable:
    """:func:`tensor_forward` for :func:`find_output_layers` that also builds
    torch-pruning's dependency graph from the same run, so that the first
    pruner takes it instead of tracing the model again. The graph goes to ``built``;
    when it cannot be built, nothing does (the pruner then builds it and reports
    the error)."""
    def forward(model: nn.Module, batch: Dict[str, Any], kept: Optional[List[Any]] = None):
        outputs: List[Any] = []

        def run(m, b):
            outputs.append(tensor_forward(m, b, kept, context=context))
            return outputs[-1]
        try:
            built.append(build_graph(model, batch, run, context, customized_pruners_for(model)))
        except Exception:
            if not outputs:
                raise
        return outputs[0]
    return forward


def _prune_steps(model: nn.Module, batch: Dict[str, Any], importance, ratio: float,
                 keep: List[nn.Module], ratio_dict, data, num_batches: int, *, graph,
                 context: TraceContext, counts: ChannelCounts, latency, iterative_steps: int,
                 **options) -> None:
    imp = build_importance(importance)
    with torch_pruning_fixes():
        heads = attention_heads(model, keep)
        pruner = GroupPruner(
            model, batch, importance=imp, importance_name=importance_name(importance),
            pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None, ignored_layers=keep,
            in_channel_groups=dict(heads), out_channel_groups=dict(heads),
            customized_pruners=customized_pruners_for(model), graph=graph, context=context,
            counts=counts, latency=latency, iterative_steps=iterative_steps, **options)
        try:
            _run_steps(model, pruner, imp, data, num_batches, iterative_steps)
        finally:
            context.concat_layout.clear()  # it holds the traced autograd graph


def _run_steps(model: nn.Module, pruner: GroupPruner, imp, data, num_batches: int,
               steps: int) -> None:
    """``steps`` pruning steps; gradient criteria get fresh gradients before each."""
    for _ in range(steps):
        if reads_gradients(imp):
            accumulate_gradients(model, data, num_batches, imp, per_sample_gradients(imp))
        for group in pruner.step(interactive=True):
            try:
                group.prune()
            except Exception as e:
                raise group_error(group, 'torch-pruning could not prune', e,
                                  'Add {root!r} to ignored_layers to prune the rest.') from e
