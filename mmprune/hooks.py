"""``mmprune.PruningHook``: prune while an mmengine Runner trains.

One line in a config::

    custom_hooks = [dict(type='mmprune.PruningHook', importance='group_l2', target_flops=0.5,
                         begin=0, end=6, interval=1, by_epoch=True)]

prunes at epochs 0, 1, ... 5, each step bringing the FLOPs closer to 50 % of
the dense model's along a ramp, and the run goes on training the smaller
model. After each step the optimizer points at the new parameters (their
state sliced like the parameters), a DDP wrapper is rebuilt around the
pruned module, an EMA copy kept by mmengine's ``EMAHook`` is resized and
sliced the same way, and every checkpoint stores the structure so that
``--resume`` and ``load_from`` rebuild it before weights load.
"""
from __future__ import annotations

import collections
import copy
import os
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn
from mmengine.dist import (all_gather_object, broadcast, broadcast_object_list, get_dist_info,
                           is_main_process)
from mmengine.hooks import EMAHook, Hook
from mmengine.model import is_model_wrapper

from .checkpoint import allow_mmengine_types
from .flops import count_flops_params
from .importance import DEFAULT_IMPORTANCE
from .options import PruneOptions, match_modules
from .pruner import prune
from .registry import HOOKS
from .schedule import Schedule
from .structure import apply_structure, compose, is_empty, structure_hash
from .tracing import make_batch, tracing_state
from .tracking import remap_optimizer, slice_copy, slices_by_name, track_slices

META_KEY = 'mmprune'
#: ``meta['mmprune']['flops_counter']`` of checkpoints whose FLOPs are MACs per image
#: (:mod:`mmprune.flops`); checkpoints saved before 2026-11-28 lack it: their FLOPs came
#: from torch-pruning's counter, which divided by the batch dict's number of keys
FLOPS_COUNTER = 'macs-per-image'
#: options of :class:`~mmprune.options.PruneOptions` the hook passes on to each step; the
#: others are the hook's own arguments, or set per step
_PRUNE_OPTIONS = tuple(n for n in PruneOptions.names()
                       if n not in ('pruning_ratio', 'importance', 'target_flops', 'input_shape',
                                    'num_batches'))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP / FSDP wrapper, or ``model``."""
    return model.module if is_model_wrapper(model) else model


def _optimizers(optim_wrapper) -> List[Any]:
    if optim_wrapper is None or isinstance(optim_wrapper, dict):  # not built (test/val only)
        return []
    if hasattr(optim_wrapper, 'optim_wrappers'):  # OptimWrapperDict
        return [w.optimizer for w in optim_wrapper.optim_wrappers.values()]
    return [optim_wrapper.optimizer]


@HOOKS.register_module()
class PruningHook(Hook):
    """Prune the model once or progressively during training.

    Args:
        importance: criterion name or dict (see :mod:`mmprune.importance`);
            gradient criteria score on the run's own recent training batches.
        pruning_ratio: final fraction of channels removed from each group.
        target_flops: final FLOPs as a fraction of the dense model's (reached
            within 2 %). Give this or ``pruning_ratio``.
        begin: first epoch (``by_epoch``) or iteration of pruning.
        end: steps are taken at ``begin, begin + interval, ...`` below
            ``end``; ``None`` prunes once, at ``begin``.
        interval: epochs/iterations between steps.
        by_epoch: count ``begin``/``end``/``interval`` in epochs.
        ramp: how the target approaches its final value over the steps:
            ``'linear'``, or ``'cubic'`` (fast first, then gentle, as in
            gradual magnitude pruning).
        input_shape: (h, w) of the example input that traces the model and
            counts FLOPs. Defaults to the config's test pipeline.
        num_batches: training batches kept for gradient criteria.
        **options: further options of :class:`mmprune.options.PruneOptions`
            (``global_pruning``, ``pruning_ratio_dict``, ``max_pruning_ratio``,
            ``round_to``, ``ignored_layers``, ``iterative_steps``, ``allocation``,
            ``seed``, ``fast_counts``, ``blocks_from``, ``trace_side`` ...), and
            ``remove_blocks`` (spread over the steps like the width) and
            ``target_latency`` (a fraction of the dense model's latency, measured at
            each step; it replaces ``pruning_ratio`` / ``target_flops``; with
            ``remove_blocks='auto'``, its default there, each step removes blocks that
            buy time until its own goal, then prunes the width; ``remove_blocks=0``: the
            width alone).
    """

    priority = 'VERY_HIGH'  # its after_load_checkpoint must resize the model before EMAHook's

    def __init__(self, importance: Any = DEFAULT_IMPORTANCE, pruning_ratio: Optional[float] = None,
                 target_flops: Optional[float] = None, begin: int = 0,
                 end: Optional[int] = None, interval: int = 1, by_epoch: bool = True,
                 ramp: str = 'linear', input_shape: Optional[Sequence[int]] = None,
                 num_batches: int = 2, **options: Any) -> None:
        unknown = sorted(set(options) - set(_PRUNE_OPTIONS))
        if unknown:
            raise TypeError(f'PruningHook got unknown option(s) {unknown}; '
                            f'known: {sorted(_PRUNE_OPTIONS)}')
        if pruning_ratio is None and target_flops is None and (
                options.get('remove_blocks') or options.get('target_latency')):
            pruning_ratio = 0.0  # blocks only, or the width set by target_latency
        if (pruning_ratio is None) == (target_flops is None) and not options.get(
                'pruning_ratio_dict'):
            raise ValueError('PruningHook needs exactly one of pruning_ratio and target_flops')
        # the options of prune() are checked now, when the config is read, not at the first step
        checked = PruneOptions(importance=importance, target_flops=target_flops, **options,
                               **({} if pruning_ratio is None else
                                  dict(pruning_ratio=pruning_ratio)))
        if pruning_ratio is not None:
            pruning_ratio = checked.pruning_ratio
        #: what ``remove_blocks`` asks of the whole run (checked); :meth:`step_blocks`
        #: spreads it over the steps
        self.block_request = checked.remove_blocks
        self.schedule = Schedule(begin, end, interval, ramp, by_epoch)
        self.importance = importance
        self.pruning_ratio = pruning_ratio
        self.target_flops = target_flops
        self.by_epoch = by_epoch
        self.points = self.schedule.points
        self.input_shape = input_shape
        self.options = options
        self.batches: collections.deque = collections.deque(maxlen=num_batches)
        # state, saved in every checkpoint
        self.structure: Dict[str, Any] = dict(version=1, layers={}, shapes={})
        self.done: List[int] = []
        self.dense: Optional[Dict[str, int]] = None
        self.current: Optional[Dict[str, int]] = None
        self.last_metrics: Dict[str, float] = {}
        #: removable blocks of the dense model (for a ``remove_blocks`` fraction)
        self.block_total: Optional[int] = None
        #: measured latency over the dense model's (``target_latency``): each step times
        #: its result beside a copy of the dense model (:attr:`latency_reference`); a run
        #: resumed before its last step has no dense copy, and its steps time beside the
        #: model they start from, their ratios multiplied
        self.latency_fraction = 1.0
        #: the dense model as it was before the first step (rank 0, ``target_latency``
        #: only, while steps remain); not saved in checkpoints
        self.latency_reference: Optional[nn.Module] = None
        allow_mmengine_types()  # --resume loads the Runner's checkpoints with weights_only=True

    # ---- what each step asks (the ramp: :class:`~mmprune.schedule.Schedule`) ----------
    def step_kwargs(self, k: int) -> Dict[str, Any]:
        """Arguments of :func:`mmprune.prune` for step ``k`` on the current model."""
        kwargs: Dict[str, Any] = dict(importance=self.importance, **self.options)
        schedule = self.schedule
        if self.options.get('target_latency') is not None:
            # of the dense latency, measured beside the dense copy where there is one,
            # else beside the model the step starts from
            goal = schedule.goal(self.options['target_latency'], k)
            kwargs['target_latency'] = goal if self.latency_reference is not None \
                else min(1.0, goal / self.latency_fraction)
        elif self.target_flops is not None:
            goal = schedule.goal(self.target_flops, k)  # of the dense FLOPs
            kwargs['target_flops'] = min(1.0, goal * self.dense['flops'] / self.current['flops'])
        else:
            kwargs['pruning_ratio'] = schedule.step_ratio(self.pruning_ratio or 0.0, k)
        if self.options.get('pruning_ratio_dict'):  # fixed ratios: ramped, as the ratio is
            kwargs['pruning_ratio_dict'] = {p: schedule.step_ratio(r, k) for p, r in
                                            self.options['pruning_ratio_dict'].items()}
        kwargs['remove_blocks'] = self.step_blocks(k) or 0  # 0: none at this step
        return kwargs

    def step_blocks(self, k: int) -> Any:
        """``remove_blocks`` of step ``k``: named blocks go at the first step; a count (or
        a fraction of the dense model's removable blocks, :attr:`block_total`) follows
        the ramp, counting the blocks already removed."""
        request = self.block_request
        if request == 'auto':  # each step removes blocks until its own latency goal
            return request
        if not request or isinstance(request, (list, tuple)):
            return request if k == 0 or not self.structure.get('removed') else None
        total = request if isinstance(request, int) else round(request * self.block_total)
        count = self.schedule.count(total, k) - len(self.structure.get('removed', {}))
        return count if count > 0 else None

    # ---- runner events ----------------------------------------------------------------
    def before_train(self, runner) -> None:
        self._check_run(runner)
        if self.dense is None:  # not restored from a checkpoint: the model is dense now
            self.dense = self._count(runner)
            self.current = dict(self.dense)
            if isinstance(self.block_request, float):
                from .depth import find_blocks
                model = unwrap_model(runner.model)
                self.block_total = len(find_blocks(model, make_batch(model, runner.cfg,
                                                                     self.input_shape)))
            if self.options.get('target_latency') is not None and get_dist_info()[0] == 0:
                # one rank prunes and times; the copy costs the dense model's memory
                # until the last step
                self.latency_reference = copy.deepcopy(unwrap_model(runner.model)).eval()
                self.latency_reference.requires_grad_(False)
            runner.logger.info(f'[mmprune] dense model: {self.dense["params"] / 1e6:.2f}M params, '
                               f'{self.dense["flops"] / 1e9:.3f}G FLOPs; pruning at '
                               f'{"epochs" if self.by_epoch else "iterations"} {self.points}')

    def _check_run(self, runner) -> None:
        """Refuse, before any training, a schedule or option this run cannot carry out."""
        hooks = [h for h in runner.hooks if isinstance(h, PruningHook)]
        if len(hooks) > 1:
            raise ValueError(f'{len(hooks)} PruningHooks in one run: each would prune the '
                             f'model again and their records would disagree; keep one '
                             f'(begin/end/interval give it several steps)')
        self.schedule.check_loop(runner.train_loop, self.done)
        model = unwrap_model(runner.model)
        if self.options.get('ignored_layers'):
            match_modules(model, self.options['ignored_layers'], 'ignored_layers entry')
        for pattern in self.options.get('pruning_ratio_dict') or {}:
            match_modules(model, pattern, 'pruning_ratio_dict key')

    def before_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._maybe_prune(runner, runner.epoch)

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        if data_batch is not None:
            self.batches.append(data_batch)
        if not self.by_epoch:
            self._maybe_prune(runner, runner.iter)

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self.last_metrics = dict(metrics or {})

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault('meta', {})[META_KEY] = dict(
            structure=copy.deepcopy(self.structure), done=list(self.done),
            dense=self.dense, current=self.current, hash=structure_hash(self.structure),
            flops_counter=FLOPS_COUNTER, block_total=self.block_total,
            latency_fraction=self.latency_fraction)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = (checkpoint.get('meta') or {}).get(META_KEY)
        if not meta or 'structure' not in meta:
            return
        structure = meta['structure']
        if structure_hash(structure) != structure_hash(self.structure):
            if not is_empty(self.structure):
                raise ValueError(
                    f'the checkpoint holds a pruned structure ({structure_hash(structure)}) '
                    f'other than the model\'s current one ({structure_hash(self.structure)})')
            model = unwrap_model(runner.model)
            before = dict(model.named_parameters())
            apply_structure(model, structure)  # the weights load right after this hook
            self._after_change(runner, before, {}, structure, None)
            self.structure = copy.deepcopy(structure)
        if runner._resume:  # carry on with the schedule; load_from starts a new one
            self.done = list(meta.get('done', []))
        dense, current = meta.get('dense'), meta.get('current')
        if dense and current and meta.get('flops_counter') != FLOPS_COUNTER:
            # an older checkpoint: re-count the model as it now is (its structure applied);
            # the dense FLOPs keep the stored ratio, which the old counter got right
            now = self._count(runner)
            dense = dict(dense, flops=round(now['flops'] * dense['flops'] / current['flops']))
            current = dict(current, flops=now['flops'])
            runner.logger.warning(
                f'[mmprune] the checkpoint\'s FLOPs were counted by an older mmprune (half '
                f'the MACs per image); re-counted: {current["flops"] / 1e9:.4f}G now, '
                f'{dense["flops"] / 1e9:.4f}G dense')
        self.dense = dense or self.dense
        self.current = current or self.current
        self.block_total = meta.get('block_total', self.block_total)
        self.latency_fraction = meta.get('latency_fraction', self.latency_fraction)
        runner.logger.info(f'[mmprune] pruned structure {structure_hash(structure)} rebuilt '
                           f'from the checkpoint; steps done: {self.done}')

    # ---- pruning ----------------------------------------------------------------------
    def _count(self, runner) -> Dict[str, int]:
        model = unwrap_model(runner.model)
        batch = make_batch(model, runner.cfg, self.input_shape)
        with tracing_state(model):  # restores every module's train/eval mode
            flops, params = count_flops_params(model, batch)
        return dict(flops=flops, params=params)

    def _maybe_prune(self, runner, point: int) -> None:
        if point not in self.points or point in self.done:
            return
        k = self.points.index(point)
        model = unwrap_model(runner.model)
        before = dict(model.named_parameters())
        ema = self._ema(runner)
        ema_before = ({k2: v.detach().clone() for k2, v in ema.module.state_dict().items()}
                      if ema is not None else None)
        rank, world = get_dist_info()
        kwargs = self.step_kwargs(k)
        payload: List[Any] = [None, None, None, None]
        failure = None
        if rank == 0:  # one rank decides, the others follow
            training = model.training
            try:
                with track_slices() as slices:
                    result = prune(model, cfg=runner.cfg, input_shape=self.input_shape,
                                   data=list(self.batches) or None,
                                   latency_reference=self.latency_reference, **kwargs)
                measured = result.options.get('latency_ratio')
                if measured is not None and self.latency_reference is None:
                    measured *= self.latency_fraction  # beside the model the step began with
                payload = [result.structure, slices_by_name(model, slices), None, measured]
            except Exception as e:  # the other ranks must not wait forever
                failure = e
                payload = [None, None, f'{type(e).__name__}: {e}', None]
            finally:
                model.train(training)
        if world > 1:
            broadcast_object_list(payload, src=0)
        if payload[2] is not None:
            if failure is not None:
                raise failure
            raise RuntimeError(f'[mmprune] pruning failed on rank 0: {payload[2]}')
        if world > 1:
            if rank != 0:
                apply_structure(model, payload[0])
            for t in model.state_dict().values():  # rank 0's values everywhere
                broadcast(t, src=0)
        step_structure, plan, _, latency_fraction = payload
        if latency_fraction is not None:
            self.latency_fraction = latency_fraction
        self.structure = compose(self.structure, step_structure)
        self._after_change(runner, before, plan, step_structure, ema_before)
        agreed = ''
        if world > 1:  # every rank must now hold the same model
            from .structure import snapshot
            hashes = all_gather_object(structure_hash(snapshot(model)['shapes']))
            if len(set(hashes)) != 1:
                raise RuntimeError(f'[mmprune] ranks disagree on the pruned shapes: {hashes}')
            agreed = f', the same on all {world} ranks'

        self.done.append(point)
        if all(p in self.done for p in self.points):
            self.latency_reference = None  # its memory back
        self.current = self._count(runner)
        ratio = self.current['flops'] / self.dense['flops']
        runner.logger.info(
            f'[mmprune] step {k + 1}/{len(self.points)} at {"epoch" if self.by_epoch else "iter"} '
            f'{point}: params {self.current["params"] / 1e6:.3f}M '
            f'({self.current["params"] / self.dense["params"]:.1%} of dense), FLOPs '
            f'{self.current["flops"] / 1e9:.4f}G ({ratio:.1%} of dense)'
            + (f', latency {self.latency_fraction:.1%} of dense (measured)'
               if self.options.get('target_latency') is not None else '')
            + f'; structure {structure_hash(self.structure)}{agreed}')
        runner.visualizer.add_scalars(
            {'pruning/flops_ratio': ratio,
             'pruning/params_ratio': self.current['params'] / self.dense['params'],
             'pruning/step': k + 1}, step=runner.iter)

    def _ema(self, runner):
        for hook in runner.hooks:
            if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
                return hook.ema_model
        return None

    def _after_change(self, runner, before: Dict[str, nn.Parameter], plan, structure,
                      ema_before) -> None:
        """Optimizer, EMA copy and DDP wrapper follow the model's new parameters."""
        model = unwrap_model(runner.model)
        for optimizer in _optimizers(getattr(runner, 'optim_wrapper', None)):
            counts = remap_optimizer(optimizer, before, model, plan)
            runner.logger.info(f'[mmprune] optimizer state: {counts}')
        ema = self._ema(runner)
        if ema is not None:
            apply_structure(ema.module, structure)
            if ema_before is not None:
                slice_copy(ema.module, ema_before, model, plan)
            ema.module.requires_grad_(False)
            ema.avg_parameters = (ema.module.state_dict() if ema.update_buffers
                                  else dict(ema.module.named_parameters()))
        if is_model_wrapper(runner.model):
            runner.model = runner.wrap_model(runner.cfg.get('model_wrapper_cfg'), model)

    def after_run(self, runner) -> None:
        if is_empty(self.structure) or not is_main_process():
            return
        from .apis import check_name, write_pruned_config
        name = os.path.splitext(os.path.basename(runner.cfg.filename or 'model'))[0]
        try:
            check_name(name)
        except ValueError:  # a config file name no _base_ can name: the run still saves
            name = 'model'
        cfg = copy.deepcopy(runner.cfg)
        cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])
                            if 'PruningHook' not in str(h.get('type', ''))]
        cfg.load_from, cfg.resume = None, False  # dense weights would not fit the pruned model
        summary = dict(hash=structure_hash(self.structure), **{
            f'{k}_ratio': round(self.current[k] / self.dense[k], 4) for k in ('flops', 'params')})
        self.dense_config, path = write_pruned_config(cfg, self.structure, runner.work_dir, name,
                                                      summary)
        self.pruned_config = path
        runner.logger.info(f'[mmprune] pruned config for the checkpoints of this run: {path}')


__all__ = ['PruningHook', 'compose']
