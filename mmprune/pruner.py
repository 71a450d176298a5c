"""``prune()``: structural pruning of an mmdet / mmseg model with torch-pruning.

Example:
    >>> import mmprune
    >>> result = mmprune.prune('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    ...                        pruning_ratio=0.5, importance='group_l2', input_shape=(256, 256))
    >>> result.model          # still a mmdet RetinaNet, with fewer channels
    >>> result.structure      # plain data, see mmprune.structure
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    Union)

import torch
import torch.nn as nn
import torch_pruning as tp
from mmengine.logging import print_log

from .custom_layers import customized_pruners_for
from .flops import (FlopsCounter, count_flops_params, layer_flops,  # noqa: F401 (re-exported)
                    recording)
from .graph import (CONCAT_LAYOUT, TOKEN_MAPS, find_output_layers, follow_input_channels,
                    make_batch, tensor_forward, tracing_state)
from .importance import (DEFAULT_IMPORTANCE, GRADIENT_IMPORTANCES, PER_SAMPLE_IMPORTANCES,
                         build_importance, importance_name)
from .latency import group_weights, layer_times
from .structure import apply_structure, diff, snapshot, structure_between

#: relative tolerance on ``target_flops``
FLOPS_TOLERANCE = 0.02
#: short side of the example input that traces the graph; a larger ``input_shape`` is
#: scaled down to it (channel coupling does not depend on the image size), while
#: FLOPs are still counted at ``input_shape``. ``None`` traces at ``input_shape``.
TRACE_SIDE: Optional[int] = 256
#: default ``round_to``: kept channel counts are multiples of 8, which measured faster
#: than exact counts on CPU (benchmarks/README.md, "Channel counts": 8 of 9 eager and 3
#: of 3 ONNX Runtime rows for RetinaNet / Faster / Mask R-CNN-R50). Layers narrower than
#: ``2 * round_to`` keep the exact count. ``round_to=None`` (or 1) gives exact counts.
DEFAULT_ROUND_TO: Optional[int] = 8
#: rounded counts are chosen, among the nearest multiple of ``round_to`` and those
#: within 1/8 of the count asked for, first to avoid a prime number (>= 7)
#: of 16-channel blocks, then to be a multiple of 2 x or 4 x ``round_to``, then nearest.
#: oneDNN's convolutions on AVX-512 CPUs split output channels into blocks of 16 and
#: block those again by a divisor of their number; 3x3 convolutions at 64x64 and 32x32
#: ran about 25 % slower per FLOP at prime block counts (7 % at 128x128) and fastest at
#: multiples of 32 (``benchmarks/channels.py``, docs/speed.md, "Channel counts"), and
#: the five CNNs of ``benchmarks/speed.py`` ran 0.08-0.16 more efficient at 50 % FLOPs
#: (SegFormer-B0 0.02) with 2 threads on such a CPU. False: the nearest multiple.
FAST_COUNTS = True
#: ... for counts from this many channels: narrower layers take the nearest multiple. In
#: a first version without it, MobileNetV2's 64-channel FPN neck kept 48 instead of 40
#: channels at 1/4 scale, and the FLOPs search took the difference from the stem and
#: first stages (16 -> 6 channels): CamVid Semantic FPN lost 4 mIoU (configs/README.md).
FAST_COUNTS_FROM = 128
#: ... and layers at least this wide (before the prune) keep whole 16-channel blocks:
#: their counts are multiples of ``lcm(round_to, 16)``, the block oneDNN's convolutions
#: work in on AVX-512 CPUs. With it the five ResNet-50 models of ``benchmarks/speed.py``
#: ran more efficient at 50 % FLOPs (docs/speed.md, "Channel counts"); ``round_to=16`` on every
#: layer did too, but cost the three MobileNetV2 recipes accuracy (a 32-channel layer
#: could keep only 16 or 32 channels). None: off.
BLOCKS_FROM: Optional[int] = 128
#: values of ``allocation``: the same ratio for every group, or ratios weighted by
#: each group's measured time per FLOP (:mod:`mmprune.latency`)
ALLOCATIONS = ('uniform', 'latency')


@dataclass
class PruneResult:
    """What :func:`prune` returns. ``flops`` are MACs per image at the example input
    (torch-pruning's per-layer formulas, see :mod:`mmprune.flops`)."""

    model: nn.Module
    structure: Dict[str, Any]
    params: Tuple[int, int]
    flops: Tuple[int, int]
    output_layers: List[str] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)
    #: the forward ``flops`` were counted on: ``'inference_forward'`` (what a deployed
    #: model runs), or ``'tensor_forward'`` (the pruner's graph) where the host's
    #: tensor mode fails on the model
    flops_forward: str = 'inference_forward'

    @property
    def flops_ratio(self) -> float:
        return self.flops[1] / max(self.flops[0], 1)

    @property
    def params_ratio(self) -> float:
        return self.params[1] / max(self.params[0], 1)

    def summary(self) -> str:
        return (f'params {self.params[0] / 1e6:.2f}M -> {self.params[1] / 1e6:.2f}M '
                f'({self.params_ratio:.1%}), FLOPs {self.flops[0] / 1e9:.2f}G -> '
                f'{self.flops[1] / 1e9:.2f}G ({self.flops_ratio:.1%})')


class _TensorForward(nn.Module):
    """Lets a module-level counter (mmengine's, in tools/analyze.py) run
    :func:`tensor_forward`, or another such forward."""

    def __init__(self, model: nn.Module, forward=tensor_forward) -> None:
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, batch):
        return self._forward(self.model, batch)


def _check_ratio(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
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


def _check_prunable(ratio_matches: Dict[str, Dict[str, nn.Module]],
                    keep: List[nn.Module]) -> None:
    """A per-layer ratio must name at least one layer whose channels can be pruned."""
    kept = {id(m) for k in keep for m in k.modules()}
    for pattern, found in ratio_matches.items():
        layers = {n: m for n, m in found.items() if isinstance(m, _PRUNABLE_ROOTS)}
        for name, m in found.items():
            layers.update({f'{name}.{n}': s for n, s in m.named_modules()
                           if n and isinstance(s, _PRUNABLE_ROOTS)})
        if not layers:
            raise ValueError(f'pruning_ratio_dict key {pattern!r} names no prunable layer '
                             f'(no conv or linear layer in {sorted(found)[:3]})')
        if all(id(m) in kept for m in layers.values()):
            raise ValueError(f'pruning_ratio_dict key {pattern!r} names only layers that are '
                             f'kept: {sorted(layers)[:3]} define the model outputs or are in '
                             f'ignored_layers')


_PRUNABLE_ROOTS = (nn.modules.conv._ConvNd, nn.Linear)


def _top_level(found: Dict[str, nn.Module]) -> Tuple[nn.Module, ...]:
    names = sorted(found)
    tops = [n for n in names if not any(n.startswith(o + '.') for o in names if o != n)]
    return tuple(found[n] for n in tops)


def _attention_projections(model: nn.Module) -> List[nn.Module]:
    """Layers of attention blocks whose channels stay: the embedding and the heads.

    ``nn.MultiheadAttention`` with one packed input projection (mmcv's wrapper:
    SegFormer, ViT, DETR-style decoders) is pruned by torch-pruning's own
    attention handler, the same channels from every head (see
    :func:`_attention_heads`), and so are the layers around it. Other attention
    modules (any module with an integer ``num_heads``: Swin's window attention,
    Twins) split their projections into heads with ``reshape`` calls built from
    constants or from the input's width, which torch-pruning's head rules do not
    cover: their projections keep their output channels, so the residual stream
    they write to keeps its width too; the feed-forward layers between them (and
    every convolution around them) are still pruned.
    """
    kept: List[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            if not _headwise(m):
                kept.append(m)
        elif isinstance(getattr(m, 'num_heads', None), int) and not any(
                isinstance(c, nn.MultiheadAttention) for c in m.children()):
            kept += [c for c in m.children() if isinstance(c, _PRUNABLE_ROOTS)]
    return list(dict.fromkeys(kept))


def _headwise(m: nn.MultiheadAttention) -> bool:
    """Whether torch-pruning's handler prunes ``m`` correctly: one packed input
    projection (query, key and value widths all ``embed_dim``)."""
    return bool(getattr(m, '_qkv_same_embed_dim', False)) and m.bias_k is None


def _attention_heads(model: nn.Module, keep: List[nn.Module]) -> Dict[nn.Module, int]:
    """Channel groups of the attention modules pruned: one per head, so that each
    head loses the same channels and ``embed_dim`` stays divisible by ``num_heads``
    (torch-pruning splits the kept channels into heads in order)."""
    kept = set(keep)
    return {m: m.num_heads for m in model.modules()
            if isinstance(m, nn.MultiheadAttention) and m not in kept and _headwise(m)
            and m.num_heads > 1}


def _trace_batch(model: nn.Module, cfg, batch: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """``batch`` scaled down to :data:`TRACE_SIDE` (sides rounded up to multiples
    of 32, the largest common backbone stride), or ``batch`` itself when small."""
    h, w = batch['inputs'].shape[-2:]
    if TRACE_SIDE is None or min(h, w) <= TRACE_SIDE:
        return batch
    scale = TRACE_SIDE / min(h, w)
    shape = tuple(int(math.ceil(s * scale / 32) * 32) for s in (h, w))
    return make_batch(model, cfg, shape, seed=seed)


def _check_loss(model: nn.Module, cfg, batch: Dict[str, Any], seed: int,
                images: int = 1) -> None:
    """Run the pruned model's ``mode='loss'`` once (train mode, ``images`` images;
    2 when a batch norm meets a single value per channel with one image).

    Layers used only by the loss (some heads' training branches) are not in the
    traced graph; if pruning broke one, this fails here, and the model is
    restored instead of being handed back broken. Buffers (BN statistics) are
    put back afterwards.
    """
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    shape = tuple(batch['inputs'].shape[-2:])
    pre = getattr(model, 'data_preprocessor', None)
    crop = getattr(pre, 'size', None)  # mmseg pads training batches to its crop size
    try:
        if crop is not None:
            pre.size = shape
        model.train()
        train_batch = make_batch(model, cfg, shape, batch_size=images, training=True,
                                 seed=seed + 7)
        with torch.no_grad():
            _loss(model, train_batch)
    except ValueError as e:
        if images > 1 or 'more than 1 value per channel' not in str(e):
            raise _loss_error(e) from e
        retry = True
    except Exception as e:
        raise _loss_error(e) from e
    else:
        retry = False
    finally:
        if crop is not None:
            pre.size = crop
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in buffers and v.shape == buffers[k].shape:
                    v.copy_(buffers[k])
        for m, mode in modes.items():
            m.training = mode
    if retry:
        _check_loss(model, cfg, batch, seed, images=2)


def _loss_error(e: Exception) -> RuntimeError:
    return RuntimeError(
        f'the pruned model fails in mode=loss ({type(e).__name__}: {e}); a layer used only '
        f'by the loss was not reached by the traced forward. The model is restored; keep '
        f'the layers feeding it with ignored_layers.')


def _one_value_norms(model: nn.Module, record) -> bool:
    """Whether a batch norm saw one value per channel of an image in ``record`` (an
    image-pooling branch): in train mode it then needs two images."""
    modules = dict(model.named_modules())
    return any(isinstance(modules.get(name), nn.modules.batchnorm._BatchNorm) and any(
        inputs and inputs[0] and math.prod(inputs[0][2:]) == 1 for inputs, _ in calls)
        for name, calls in record.items())


def _loss(model: nn.Module, batch: Dict[str, Any]) -> torch.Tensor:
    from mmengine.logging import MessageHub
    hub = MessageHub.get_current_instance()
    for key in ('iter', 'epoch'):  # outside a runner: losses with warm-up read them (BoxInst, TOOD)
        if hub.get_info(key) is None:
            hub.update_info(key, 0)
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    loss, _ = model.parse_losses(losses)
    return loss


def _restore(model: nn.Module, before: Dict[str, Any], state: Dict[str, torch.Tensor]) -> None:
    apply_structure(model, structure_between(snapshot(model), before), check_edits=False)
    model.load_state_dict(state)
    for p in model.parameters():
        p.grad = None


def check_options(*, pruning_ratio: float = 0.5, importance: Any = DEFAULT_IMPORTANCE,
                  target_flops: Optional[float] = None, max_pruning_ratio: float = 1.0,
                  iterative_steps: int = 1, round_to: Optional[int] = DEFAULT_ROUND_TO,
                  allocation: str = 'uniform', global_pruning: bool = False,
                  pruning_ratio_dict: Optional[Dict[str, float]] = None,
                  **_: Any) -> Dict[str, Any]:
    """Check the options of :func:`prune` that need no model; one clear error each.

    Shared by :func:`prune` and :class:`mmprune.PruningHook` (which checks them when
    the config is read, not after epochs of training). Returns the checked
    ``pruning_ratio`` and ``pruning_ratio_dict`` (its ratios as floats).
    """
    pruning_ratio = _check_ratio('pruning_ratio', pruning_ratio)
    if target_flops is not None and (isinstance(target_flops, bool) or not isinstance(
            target_flops, (int, float)) or not 0 < target_flops <= 1):
        raise ValueError(f'target_flops must be a fraction in (0, 1], but got {target_flops!r}')
    if not (isinstance(max_pruning_ratio, (int, float)) and 0 < max_pruning_ratio <= 1):
        raise ValueError(f'max_pruning_ratio must be in (0, 1], but got {max_pruning_ratio!r}')
    if not isinstance(iterative_steps, int) or iterative_steps < 1:
        raise ValueError(f'iterative_steps must be a positive int, but got {iterative_steps!r}')
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise ValueError(f'round_to must be a positive int or None, but got {round_to!r}')
    if allocation not in ALLOCATIONS:
        raise ValueError(f'allocation must be one of {ALLOCATIONS}, but got {allocation!r}')
    if allocation != 'uniform' and global_pruning:
        raise ValueError(f'allocation={allocation!r} sets each group\'s ratio; it does not '
                         f'combine with global_pruning=True (one ranking across layers)')
    ratio_patterns = {k: _check_ratio(f'pruning_ratio_dict[{k!r}]', v)
                      for k, v in (pruning_ratio_dict or {}).items()}
    build_importance(importance)  # bad kwargs fail before anything is built
    return dict(pruning_ratio=pruning_ratio, pruning_ratio_dict=ratio_patterns)


def prune(model: Union[nn.Module, str, Any],
          pruning_ratio: float = 0.5,
          importance: Union[str, Dict[str, Any]] = DEFAULT_IMPORTANCE,
          *,
          cfg: Any = None,
          checkpoint: Optional[str] = None,
          input_shape: Optional[Sequence[int]] = None,
          global_pruning: bool = False,
          pruning_ratio_dict: Optional[Dict[str, float]] = None,
          max_pruning_ratio: float = 1.0,
          round_to: Optional[int] = DEFAULT_ROUND_TO,
          iterative_steps: int = 1,
          target_flops: Optional[float] = None,
          ignored_layers: Sequence[str] = (),
          allocation: str = 'uniform',
          data: Optional[Iterable[Dict[str, Any]]] = None,
          num_batches: int = 2,
          seed: int = 0) -> PruneResult:
    """Prune the channels of an mmdet detector or mmseg segmentor in place.

    Args:
        model: a built host model, or a config (path, ``mmdet::``/``mmseg::``
            name, or :class:`mmengine.Config`) to build one from.
        pruning_ratio: fraction of channels removed from each prunable group.
            Defaults to 0.5.
        importance: criterion name (see :data:`mmprune.importance.IMPORTANCES`)
            or ``dict(type=name, **kwargs)``. Defaults to
            :data:`~mmprune.importance.DEFAULT_IMPORTANCE` (``'group_l2'``).
        cfg: the config of a built ``model`` (example input size, dataloaders).
        checkpoint: dense weights to load when ``model`` is a config.
        input_shape: (h, w) of the example input. Defaults to the config's
            test pipeline resize.
        global_pruning: rank channels across layers instead of per layer.
        pruning_ratio_dict: per-layer ratios, ``{name or glob pattern: ratio}``.
        max_pruning_ratio: cap on any layer's ratio under global pruning.
        round_to: keep channel counts multiples of this (the nearest one,
            at least ``round_to``, preferring counts that convolutions run fast
            at, see :data:`FAST_COUNTS`; layers of :data:`BLOCKS_FROM` channels
            or more keep multiples of 16; layers narrower than
            ``2 * round_to`` keep the exact count). Defaults to
            :data:`DEFAULT_ROUND_TO` (8); ``None`` or 1 keeps exact counts.
        iterative_steps: prune in this many steps, re-scoring in between.
        target_flops: prune until FLOPs are this fraction of the dense FLOPs
            (within 2 %); overrides ``pruning_ratio``.
        ignored_layers: layer names or glob patterns never pruned, in addition
            to the output layers found from the graph.
        allocation: ``'uniform'`` prunes every group at ``pruning_ratio``;
            ``'latency'`` prunes each group at the ratio times its measured
            time per FLOP relative to the model's (:mod:`mmprune.latency`,
            timed at ``input_shape`` on the model's device), so that the same
            FLOPs cost less time. ``pruning_ratio_dict`` entries keep their
            ratios.
        data: batches (as given by a dataloader) for gradient criteria;
            synthetic batches with the model's loss are used when None.
        num_batches: batches used by gradient criteria.
        seed: seed of the synthetic inputs.

    Returns:
        PruneResult: the pruned model (same object when a model was given),
        its structure and the params/FLOPs before and after.
    """
    if isinstance(ignored_layers, str):
        ignored_layers = [ignored_layers]
    checked = check_options(pruning_ratio=pruning_ratio, importance=importance,
                            target_flops=target_flops, max_pruning_ratio=max_pruning_ratio,
                            iterative_steps=iterative_steps, round_to=round_to,
                            allocation=allocation, global_pruning=global_pruning,
                            pruning_ratio_dict=pruning_ratio_dict)
    pruning_ratio, ratio_patterns = checked['pruning_ratio'], checked['pruning_ratio_dict']
    name = importance_name(importance)

    if not isinstance(model, nn.Module):
        from .apis import build_model
        cfg = model
        model, cfg = build_model(cfg, checkpoint)
    cfg = cfg if cfg is not None else getattr(model, 'cfg', None)

    ignored = match_modules(model, list(ignored_layers), 'ignored_layers entry') \
        if ignored_layers else {}
    ratio_matches = {pattern: match_modules(model, pattern, 'pruning_ratio_dict key')
                     for pattern in ratio_patterns}
    ratio_dict = {_top_level(ratio_matches[p]): r for p, r in ratio_patterns.items()}
    batch = make_batch(model, cfg, input_shape, seed=seed)
    if name in GRADIENT_IMPORTANCES and data is None:
        data = _train_batches(cfg, num_batches) or [
            make_batch(model, cfg, input_shape, seed=seed + 1 + i) for i in range(num_batches)]

    options = dict(pruning_ratio=pruning_ratio, importance=importance,
                   global_pruning=global_pruning,
                   pruning_ratio_dict=ratio_patterns or None,
                   max_pruning_ratio=max_pruning_ratio, round_to=round_to,
                   iterative_steps=iterative_steps, target_flops=target_flops,
                   ignored_layers=list(ignored_layers), allocation=allocation,
                   input_shape=list(batch['inputs'].shape[-2:]))
    before = snapshot(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    h, w = options['input_shape']

    def attempt() -> Tuple[List[str], int, int, int, str]:
        with tracing_state(model), follow_input_channels(model):
            _log(f'tracing {type(model).__name__} (example input {h}x{w}) and building the '
                 f'dependency graph')
            small = _trace_batch(model, cfg, batch, seed)
            built: List[Any] = []  # the dependency graph, built from the same forward
            try:
                with recording(model) as small_record:  # the dense shapes at the small size
                    output_layers, _ = find_output_layers(model, small, _building(built))
            except Exception:  # the model does not run at the smaller size: trace at full size
                if small is batch:
                    raise
                small, small_record = batch, None
                built.clear()
                output_layers, _ = find_output_layers(model, batch, _building(built))
            named = dict(model.named_modules())
            keep = list(ignored.values()) + [named[n] for n in output_layers] \
                + _attention_projections(model)
            _check_prunable(ratio_matches, keep)
            _log(f'{len(output_layers)} output layers kept; counting the FLOPs of the '
                 f'inference forward')
            counter = FlopsCounter(model, batch, small, small_record)
            flops0, params0 = counter.dense, sum(p.numel() for p in model.parameters())
            if allocation == 'latency':
                _log('timing every layer for allocation=\'latency\'')
            # time per FLOP of what a deployed model runs (a two-stage detector's RoI
            # align and head on 1000 proposals, no auxiliary heads), as the FLOPs count
            latency = _Latency(layer_times(model, batch, forward=counter.forward),
                               layer_flops(model, counter.full)) \
                if allocation == 'latency' else None

            def run(ratio: float, refine: bool = False, exact: bool = False) -> int:
                _prune_steps(model, small, importance, ratio, keep,
                             None if refine else ratio_dict, data, num_batches,
                             graph=built.pop() if built else None,
                             global_pruning=global_pruning or refine,
                             max_pruning_ratio=max_pruning_ratio,
                             round_to=None if exact else round_to,
                             iterative_steps=1 if refine else iterative_steps,
                             latency=None if refine else latency)
                try:  # the counting forward also lets follow_input_channels see the new channels
                    flops = counter.count(model)
                    what = 'global-ranking refinement' if refine else 'ratio'
                    _log(f'{what} {ratio:.4f}{" (exact channel counts)" if exact else ""}: '
                         f'FLOPs {flops / flops0:.1%} of dense' + (
                             f' (target {float(target_flops):.1%})'
                             if target_flops is not None else ''))
                    return flops
                except Exception as e:
                    h, w = counter.shape
                    raise RuntimeError(
                        f'the pruned model fails its forward at {h}x{w} ({type(e).__name__}: '
                        f'{e}); the model is restored. Prune less (a lower ratio, or round_to '
                        f'keeping several channels per norm group), or give a larger '
                        f'input_shape.') from e

            if target_flops is None:
                flops1 = run(pruning_ratio) if pruning_ratio > 0 or ratio_dict else flops0
            elif target_flops >= 1:  # the dense model is the target: nothing to prune
                options.update(pruning_ratio=0.0)
                flops1 = flops0
            else:
                options.update(_search_flops(
                    run, lambda: _restore(model, before, state), model, flops0,
                    float(target_flops), max_pruning_ratio, rounded=bool(round_to)
                    and round_to > 1))
                flops1 = counter.count(model)
            _log('checking that the pruned model still computes its loss')
            _check_loss(model, cfg, small, seed,
                        2 if _one_value_norms(model, counter.small_dense or counter.full) else 1)
            for p in model.parameters():
                p.grad = None
        return output_layers, flops0, params0, flops1, counter.forward.__name__

    TOKEN_MAPS.update(strict=False, relaxed=0)
    try:
        try:
            output_layers, flops0, params0, flops1, counted = attempt()
        except RuntimeError as e:
            if not TOKEN_MAPS['relaxed']:
                raise
            # a reshape of tokens to maps was let follow the pruned width, but some shape is
            # fixed elsewhere: prune again with the channels of such reshapes kept
            _restore(model, before, state)
            print_log(f'[mmprune] pruning with token maps following the pruned width failed '
                      f'({type(e).__name__}: {str(e)[:160]}); pruning again with their '
                      f'channels kept', logger='current', level=logging.WARNING)
            TOKEN_MAPS['strict'] = True
            output_layers, flops0, params0, flops1, counted = attempt()
    except BaseException:
        _restore(model, before, state)
        raise
    finally:
        TOKEN_MAPS.update(strict=False, relaxed=0)
    params1 = sum(p.numel() for p in model.parameters())
    structure = diff(before, model)
    result = PruneResult(model, structure, (params0, params1), (flops0, flops1),
                         output_layers, options, counted)
    print_log(f'[mmprune] {result.summary()}; kept output layers: {output_layers}',
              logger='current', level=logging.INFO)
    return result


def _log(message: str) -> None:
    """One stage of :func:`prune` to mmengine's current logger (a prune of an R50
    model takes tens of seconds, a ``target_flops`` search several trials)."""
    print_log(f'[mmprune] {message}', logger='current', level=logging.INFO)


def _bracket(run: Callable[[float], int], restore: Callable[[], None], dense: int,
             target: float, cap: float, guess: float, start: float = 1.0,
             near: Optional[float] = None):
    """Search the ratio whose FLOPs are ``target`` of ``dense``.

    ``start`` is the FLOPs fraction at ratio 0 (below 1 when refining a pruned
    model). With ``near``, the search stops at a trial above the target by at
    most ``near * target`` (a refinement takes it from there). FLOPs fall
    roughly as ``(1 - ratio) ** k``; each trial fits ``k`` through itself and
    the largest ratio still above the target (ratio 0 at first), and the
    estimate is kept inside the bracket of the trials so far.
    Returns ``(ratio, frac, met, pruned)``: when met, the model is left pruned
    at ``ratio``; otherwise ``ratio`` is the largest one tried whose FLOPs
    fraction ``frac`` is still above the target, and the model is left pruned
    at it when ``pruned`` (its trial was the last), else restored.
    """
    lo, f_lo, hi = 0.0, start, cap
    ratio = min(max(guess, 1e-3), cap)
    for _ in range(10):
        frac = run(ratio) / dense
        if abs(frac - target) <= FLOPS_TOLERANCE * target:
            return ratio, frac, True, True
        base, f_base = lo, f_lo
        if frac > target:
            lo, f_lo = ratio, frac
        else:
            hi = ratio
        # FLOPs move in steps here (leave the rest to refinement), or the cap is reached
        if hi - lo < 5e-3 or lo >= cap or (
                near is not None and lo == ratio and frac - target <= near * target):
            if lo != ratio:
                restore()
            return lo, f_lo, False, lo == ratio and lo > 0
        restore()
        estimate = (lo + hi) / 2
        if 0 < frac < f_base and base < ratio < 1:
            k = math.log(frac / f_base) / math.log((1 - ratio) / (1 - base))
            estimate = 1 - (1 - base) * (target / f_base) ** (1 / k)
        if not lo < estimate < hi:
            estimate = (lo + hi) / 2 if hi < cap or frac <= target else cap
        ratio = min(estimate, cap)
    return lo, f_lo, False, False


def _search_flops(run: Callable[..., int], restore: Callable[[], None], model: nn.Module,
                  dense: int, target: float, max_ratio: float,
                  rounded: bool = True) -> Dict[str, Any]:
    """Prune ``model`` to ``target`` of the dense FLOPs, within :data:`FLOPS_TOLERANCE`.

    A uniform ratio moves FLOPs in steps when layers are narrow, so when no
    ratio lands within the tolerance, the model is pruned at the largest ratio
    above the target and the rest is removed by a small global-ranking step
    (with exact channel counts when rounded ones cannot land within it).
    """
    cap = min(max_ratio, 0.99)
    # a uniform ratio within 3x the tolerance above the target is left to the refinement
    ratio, frac, met, pruned = _bracket(run, restore, dense, target, cap,
                                        1 - math.sqrt(target), near=3 * FLOPS_TOLERANCE)
    exact_counts: Dict[str, Any] = {}
    if ratio >= cap and rounded:
        # rounded counts keep at least round_to channels per layer, a floor under the
        # FLOPs of a deep prune: search again with exact counts
        print_log(f'[mmprune] target_flops={target} is below what rounded channel counts '
                  f'reach ({frac:.1%} at ratio {cap:.3f}); searching with exact counts '
                  f'(round_to=None)', logger='current', level=logging.WARNING)
        if pruned:
            restore()
        exact_counts = dict(round_to=None)
        base_run = run

        def run(ratio: float, refine: bool = False, exact: bool = False) -> int:
            return base_run(ratio, refine=refine, exact=True)

        ratio, frac, met, pruned = _bracket(run, restore, dense, target, cap,
                                            1 - math.sqrt(target), near=3 * FLOPS_TOLERANCE)
    if met:
        return dict(pruning_ratio=ratio, **exact_counts)
    if ratio >= cap:
        raise ValueError(
            f'target_flops={target} is unreachable: at the largest allowed ratio {cap:.3f} '
            f'(max_pruning_ratio={max_ratio}) FLOPs are still {frac:.1%} of dense'
            + (' with exact channel counts' if rounded else '')
            + '; the layers kept whole (output layers, ignored_layers) set a floor. Ask for '
              'more FLOPs, or a higher max_pruning_ratio')
    if ratio > 0 and not pruned:
        run(ratio)
    before = snapshot(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    exact = False
    extra, frac2, met, pruned = _bracket(lambda r: run(r, refine=True),
                                         lambda: _restore(model, before, state), dense, target,
                                         cap, (frac - target) / frac / 2, frac)
    if not met:  # rounded channel counts move FLOPs in steps too coarse for the target
        exact = True
        if pruned:
            _restore(model, before, state)
        extra, frac2, met, pruned = _bracket(lambda r: run(r, refine=True, exact=True),
                                             lambda: _restore(model, before, state), dense,
                                             target, cap, (frac - target) / frac / 2, frac)
    if not met:  # the model keeps the largest refinement above the target
        final = frac2 if pruned or extra == 0 else run(extra, refine=True, exact=True) / dense
        print_log(f'[mmprune] target_flops={target} not met within {FLOPS_TOLERANCE:.0%}: '
                  f'{final:.1%} of the FLOPs before this prune', logger='current',
                  level=logging.WARNING)
    return dict(pruning_ratio=ratio, global_refine_ratio=extra, **exact_counts,
                **(dict(refine_round_to=None) if exact and not exact_counts else {}))


@contextlib.contextmanager
def _concat_sizes_guard():
    """Five fixes to torch-pruning 1.6.1's concat and reshape index mapping.

    * A concat that also takes untraced tensors (CGNet concatenates the
      down-sampled image) has fewer graph inputs than pieces, so torch-pruning's
      offsets are wrong and it drops the mapping (indices then pass through
      unshifted and prune the wrong channels). The layout recorded while tracing
      (``graph.CONCAT_LAYOUT``) gives each traced input its true offset.
    * It turns the mapping off for every concat downstream of a ViT's position
      embedding (its fix for the class-token concat), including the decode
      head's channel concats, which then prune the wrong channels.
    * It sums a concat's input sizes before checking them for None (an input
      whose channels it cannot infer) and raises TypeError; its own next step
      gives up the index mapping in that case, which is what this does.
    * Its channel inference indexes a split's sizes by the position of a
      consumer among the split's consumers, which overflows when one chunk feeds
      several ops (Sparse R-CNN's dynamic convs) and raises IndexError; the
      channels are then unknown (None), and it gives up that concat's or
      reshape's mapping as it does for any unknown size.
    * It reads a reshape's input size from ``grad_fn._saved_self_sizes``, which
      torch >= 2.x names ``_saved_self_sym_sizes``; it then falls back to a
      model-wide switch that any ``nn.Linear`` with 3-D output turns off, so a
      Swin or PVT backbone loses the flatten mapping of every RoI head (the
      first FC layer then keeps the wrong inputs). When that switch is off, the
      flatten of a 4-D map is mapped anyway if C*H*W is the next layer's input
      width (its size read under the new name); everything else keeps
      torch-pruning's own behaviour (EncNet relies on it).
    """
    from torch_pruning.dependency import index_mapping
    original = index_mapping.update_concat_index_mapping

    def guarded(graph, node):
        pieces = CONCAT_LAYOUT.get(node.grad_fn)
        if pieces is not None:
            # torch-pruning turns the mapping off for every concat downstream of a 3-D
            # parameter (a ViT's position embedding); a 4-D channel concat needs it
            node.enable_index_mapping = True
        if pieces is not None and sum(t for t, _ in pieces) == len(node.inputs) \
                and node.enable_index_mapping:
            from torch_pruning.dependency.shape_infer import infer_channels_between
            # current sizes (this runs again after each pruned group); an input whose
            # channels no layer defines (the image) keeps its traced size
            inferred = iter(infer_channels_between(graph, n, node) for n in node.inputs)
            sizes = [next(inferred) if traced else None for traced, _ in pieces]
            if any(s is None for s in sizes):
                sizes = [s if s is not None else size for s, (_, size) in zip(sizes, pieces)]
                node.module.concat_sizes = [s for s, (t, _) in zip(sizes, pieces) if t]
                starts = [sum(sizes[:i]) for i in range(len(sizes))]
                spans = [[a, a + s] for a, s, (t, _) in zip(starts, sizes, pieces) if t]
                for span, in_node in zip(spans, node.inputs):
                    for dep in node.dependencies:
                        if dep.target == in_node:
                            dep.index_mapping[1] = index_mapping._ConcatIndexMapping(
                                offset=span, reverse=True)
                    for dep in in_node.dependencies:
                        if dep.target == node:
                            dep.index_mapping[1] = index_mapping._ConcatIndexMapping(
                                offset=span, reverse=False)
                return None
        try:
            return original(graph, node)
        except TypeError:
            if node.module.concat_sizes is not None and None in node.module.concat_sizes:
                return None
            raise

    from torch_pruning.dependency import shape_infer
    original_infer = shape_infer.infer_out_channels_recursively

    def guarded_infer(graph, node, recursive_depth):
        try:
            return original_infer(graph, node, recursive_depth)
        except IndexError:
            return None

    original_reshape = index_mapping.update_reshape_index_mapping

    def guarded_reshape(graph, node):
        size = getattr(node.grad_fn, '_saved_self_sym_sizes', None)
        if size is None or hasattr(node.grad_fn, '_saved_self_sizes') or graph._2d_4d \
                or len(size) != 4:  # only flattens of maps the switch turned off
            return original_reshape(graph, node)
        widths = [shape_infer.infer_in_channels_recursively(graph, n, [0])
                  for n in node.outputs]
        if int(size[1]) * int(size[2]) * int(size[3]) not in widths:
            return None
        graph._2d_4d = True  # off, or this returned above
        try:
            return original_reshape(graph, node)
        finally:
            graph._2d_4d = False

    index_mapping.update_concat_index_mapping = guarded
    index_mapping.update_reshape_index_mapping = guarded_reshape
    shape_infer.infer_out_channels_recursively = guarded_infer
    try:
        yield
    finally:
        index_mapping.update_concat_index_mapping = original
        index_mapping.update_reshape_index_mapping = original_reshape
        shape_infer.infer_out_channels_recursively = original_infer


def _flatten_indices(mapping, idxs):
    """torch-pruning's flatten index mapping (a map's channel -> the ``stride`` inputs of
    the next linear layer, and back), same result without its per-index keyword
    construction: the RoI head's flatten (256 x 7 x 7) made this most of a two-stage
    detector's pruning time. The reverse map keeps first-seen order instead of a set's."""
    from torch_pruning._helpers import _HybridIndex
    new, stride = tuple.__new__, mapping._stride
    if mapping.reverse:
        return [new(_HybridIndex, pair)
                for pair in dict.fromkeys((i.idx // stride, i.root_idx) for i in idxs)]
    out: List[Any] = []
    for i in idxs:
        root = i.root_idx
        out.extend([new(_HybridIndex, (k, root))
                    for k in range(i.idx * stride, (i.idx + 1) * stride)])
    return out


@contextlib.contextmanager
def _fast_flatten_mapping():
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
    original = _FlattenIndexMapping.__call__
    _FlattenIndexMapping.__call__ = _flatten_indices
    try:
        yield
    finally:
        _FlattenIndexMapping.__call__ = original


def _building(built: List[Any]) -> Callable:
    """:func:`tensor_forward` for :func:`find_output_layers` that also builds
    torch-pruning's dependency graph from the same run, so that the first
    ``MetaPruner`` takes it instead of tracing the model again. The graph and the
    concat layouts of its forward go to ``built``; when the graph cannot be built,
    nothing does (the ``MetaPruner`` then builds it and reports the error)."""
    def forward(model: nn.Module, batch: Dict[str, Any], kept: Optional[List[Any]] = None):
        outputs: List[Any] = []

        def run(m, b):
            outputs.append(tensor_forward(m, b, kept))
            return outputs[-1]
        try:
            with _concat_sizes_guard(), _fast_flatten_mapping():
                graph = tp.DependencyGraph().build_dependency(
                    model, batch, forward_fn=run, customized_pruners=customized_pruners_for(model))
            built.append((graph, dict(CONCAT_LAYOUT)))
        except Exception:
            if not outputs:
                raise
        return outputs[0]
    return forward


@contextlib.contextmanager
def _given_graph(graph):
    """``MetaPruner`` takes ``graph`` (a graph and its concat layouts from
    :func:`_building`, for the model as it is) instead of building one."""
    if graph is None:
        yield
        return
    from torch_pruning import dependency
    graph, layout = graph
    real = dependency.DependencyGraph
    CONCAT_LAYOUT.clear()
    CONCAT_LAYOUT.update(layout)  # a later forward (the FLOPs count) replaced them

    class Given:
        def build_dependency(self, *args, **kwargs):
            return graph
    dependency.DependencyGraph = Given
    try:
        yield
    finally:
        dependency.DependencyGraph = real


def _prune_steps(model: nn.Module, batch: Dict[str, Any], importance, ratio: float,
                 keep: List[nn.Module], ratio_dict, data, num_batches: int,
                 graph=None, latency: Optional['_Latency'] = None, **options) -> None:
    name = importance_name(importance)
    imp = build_importance(importance)
    with _concat_sizes_guard(), _fast_flatten_mapping():
        with _given_graph(graph):
            heads = _attention_heads(model, keep)
            pruner = tp.pruner.MetaPruner(
                model, batch, importance=imp, pruning_ratio=ratio,
                pruning_ratio_dict=ratio_dict or None, ignored_layers=keep,
                in_channel_groups=dict(heads), out_channel_groups=dict(heads),
                customized_pruners=customized_pruners_for(model),
                forward_fn=tensor_forward, **options)
        _name_importance_failures(pruner, name)
        if latency is not None:
            latency.allocate(pruner, model, ratio)
        if options.get('round_to'):
            _round_by_groups(pruner, down=options.get('global_pruning', False))
        try:
            _run_steps(model, pruner, imp, name, data, num_batches, options['iterative_steps'])
        finally:
            CONCAT_LAYOUT.clear()  # it holds the traced autograd graph


class _Latency:
    """Per-group ratios of ``allocation='latency'``: each group's weight from
    :func:`mmprune.latency.group_weights`, computed on the first prune (of the
    model as given) and kept by the groups' root layer names for later trials."""

    def __init__(self, times, flops: Dict[str, int]) -> None:
        self.times, self.flops = times, flops
        self.weights: Optional[Dict[str, float]] = None
        self.members: Dict[str, List[str]] = {}  # root -> layers whose outputs it prunes

    def allocate(self, pruner, model: nn.Module, ratio: float) -> None:
        graph = pruner.DG
        if self.weights is None:
            names = {m: n for n, m in model.named_modules()}
            groups = []
            for group in graph.get_all_groups(ignored_layers=pruner.ignored_layers,
                                              root_module_types=pruner.root_module_types):
                members = [(names[dep.target.module], graph.is_out_channel_pruning_fn(dep.handler))
                           for dep, _ in group if dep.target.module in names]
                root = names[group[0].dep.target.module]
                self.members[root] = [n for n, out in members if out]
                groups.append((root, members))
            self.weights = group_weights(groups, self.times, self.flops)
        modules = dict(model.named_modules())
        given = set(pruner._layer_to_scope)  # pruning_ratio_dict's layers
        for root, weight in self.weights.items():
            module = modules.get(root)
            if module is None or any(modules.get(n) in given for n in self.members.get(root, ())):
                continue  # a pruning_ratio_dict entry covers this group (as torch-pruning
                # matches them: a layer whose outputs the group prunes)
            # at most half-way from the common ratio to 1: a group keeps at least half the
            # channels the common ratio leaves (torch-pruning skips a group asked for all)
            pruner.pruning_ratio_dict[module] = pruner.iterative_pruning_ratio_scheduler(
                min(ratio * weight, (1 + ratio) / 2, pruner.max_pruning_ratio),
                pruner.iterative_steps)
            pruner._layer_to_scope[module] = (f'_mmprune_latency_{root}', [module])


def _round_channels(n_pruned: int, current: int, round_to: int, groups: int = 1,
                    down: bool = False) -> int:
    """Channels to prune (per norm/conv group) so that the kept count is a multiple of
    ``round_to``.

    torch-pruning rounds the kept count down and ignores channel groups, which can
    remove every channel of a narrow layer or of a GroupNorm group; here the kept
    count goes to a multiple near the count asked for (below it under global
    ranking, where small per-layer counts would otherwise round to nothing), never
    below one multiple, and layers narrower than two multiples keep the exact count.
    Which multiple: :data:`FAST_COUNTS` (the nearest one when it is off); with it, a
    layer of :data:`BLOCKS_FROM` channels or more keeps whole 16-channel blocks. With ``groups``
    channel groups (GroupNorm, grouped convolutions) ``n_pruned`` is per group.
    """
    groups = max(groups, 1)
    if FAST_COUNTS and BLOCKS_FROM is not None and current >= BLOCKS_FROM:
        round_to = math.lcm(round_to, 16)
    size = current // groups
    unit = round_to // math.gcd(round_to, groups)  # per-group multiple
    if size < 2 * unit:
        return n_pruned
    want = size - n_pruned
    kept = (want // unit if down else int(want / unit + 0.5)) * unit
    if FAST_COUNTS and FAST_COUNTS_FROM <= want * groups and kept < size:
        # the multiples within 1/8 of the count, and the nearest
        first = max(math.ceil(want * 7 / 8 / unit), 1) * unit
        last = min(want if down else want * 9 // 8, size)
        near = [kept] + list(range(first, last + 1, unit))
        kept = max(near, key=lambda k: (not _slow_count(k * groups),
                                        min(_twos(k // unit), 2), -abs(k - want), -k))
    return min(max(size - max(kept, unit), 0), size - 1)


def _twos(n: int) -> int:
    """How many times 2 divides ``n`` (> 0)."""
    return (n & -n).bit_length() - 1


def _slow_count(channels: int) -> bool:
    """Whether ``channels`` make a prime number (>= 7) of 16-channel blocks."""
    blocks = -(-channels // 16)
    return blocks >= 7 and all(blocks % d for d in range(2, math.isqrt(blocks) + 1))


def _round_by_groups(pruner, down: bool) -> None:
    """Make ``pruner`` round with :func:`_round_channels`, told each group's channel
    groups: torch-pruning asks for the root layer's width right before rounding, and
    its channel groups were computed (per root layer) while scoring."""
    groups: Dict[nn.Module, int] = {}
    last: List[Optional[nn.Module]] = [None]
    get_groups, graph = pruner._get_channel_groups, pruner.DG

    def channel_groups(group):
        n = get_groups(group)
        groups[group[0].dep.target.module] = n
        return n

    def remember(fn):
        def width(module):
            last[0] = module
            return fn(module)
        return width

    pruner._get_channel_groups = channel_groups
    graph.get_out_channels = remember(graph.get_out_channels)
    graph.get_in_channels = remember(graph.get_in_channels)
    pruner._round_to = lambda n, current, round_to: _round_channels(
        n, current, round_to, groups.get(last[0], 1), down)


def _name_importance_failures(pruner, name: str) -> None:
    """A criterion that fails on a group (torch-pruning's score reduction meets
    an index layout it does not expect, e.g. BN scales behind a concat) raises
    one error naming the group's layer instead of a bare IndexError."""
    real = pruner.estimate_importance

    def estimate(group):
        try:
            return real(group)
        except Exception as e:
            raise _group_error(group, f'importance {name!r} failed on', e,
                               'Choose another importance, or add {root!r} to '
                               'ignored_layers.') from e
    pruner.estimate_importance = estimate


def _group_error(group, what: str, e: Exception, advice: str) -> RuntimeError:
    """One error naming the group's root layer (``{root!r}`` in ``advice``)."""
    root = group[0][0].target._name
    return RuntimeError(
        f'{what} the channels of layer {root!r} and the layers coupled with it '
        f'({type(e).__name__}: {e}); the model is restored. ' + advice.format(root=root))


def _run_steps(model: nn.Module, pruner, imp, name: str, data, num_batches: int,
               steps: int) -> None:
    """``steps`` pruning steps; gradient criteria get fresh gradients before each."""
    for _ in range(steps):
        if name in GRADIENT_IMPORTANCES:
            _accumulate_gradients(model, data, num_batches, imp, name in PER_SAMPLE_IMPORTANCES)
        for group in pruner.step(interactive=True):
            try:
                group.prune()
            except Exception as e:
                raise _group_error(group, 'torch-pruning could not prune', e,
                                   'Add {root!r} to ignored_layers to prune the rest.') from e


def _train_batches(cfg, num_batches: int) -> Optional[List[Dict[str, Any]]]:
    """A few batches of the config's train dataloader, or None when it has none.

    A dataloader whose data is not on disk (a zoo config without its dataset)
    falls back to synthetic batches; one that is built but yields nothing is
    an error.
    """
    loader_cfg = cfg.get('train_dataloader') if cfg is not None else None
    if not loader_cfg:
        return None
    from mmengine.registry import DATASETS, init_default_scope
    from mmengine.runner import Runner
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    loader_cfg = copy.deepcopy(loader_cfg)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    try:
        dataset = DATASETS.build(loader_cfg['dataset'])
    except (FileNotFoundError, OSError) as e:
        print_log(f'[mmprune] train_dataloader unavailable ({e}); gradient importance uses '
                  f'synthetic batches', logger='current', level=logging.WARNING)
        return None
    except Exception as e:  # an empty annotation file fails inside the host's dataset
        raise ValueError(f'the gradient importance needs data, but the config\'s '
                         f'train_dataloader dataset could not be built ({type(e).__name__}: '
                         f'{e}); is it empty?') from e
    batches = []
    if len(dataset) > 0:
        loader_cfg['dataset'] = dataset
        batches = list(itertools.islice(iter(Runner.build_dataloader(loader_cfg)), num_batches))
    if not batches:
        raise ValueError('the gradient importance needs data, but the config\'s '
                         'train_dataloader yielded no batch (is its dataset empty?)')
    return batches


@contextlib.contextmanager
def loss_mode(model: nn.Module, seed: int = 0) -> Iterator[None]:
    """The mode a gradient criterion's loss runs in; every module's mode restored after.

    The loss is computed as in training, because some heads' forward depends on
    ``self.training`` (RepPoints returns an extra output, KNet's decode head every
    stage, Deformable DETR's head the encoder's proposals) and their loss expects
    the training outputs. Two things are set deliberately instead of as in training:
    batch norms use their running statistics (a handful of example images would
    give noisy batch statistics, and the running ones must not move), and dropout
    or drop-path draw from a fixed seed, so that a criterion scores the same
    weights the same way every time.
    """
    modes = {m: m.training for m in model.modules()}
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model.train()
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _accumulate_gradients(model: nn.Module, data, num_batches: int, imp,
                          per_sample: bool) -> None:
    model.zero_grad(set_to_none=True)
    if per_sample:
        imp.zero_grad()
    used = 0
    with loss_mode(model):
        for batch in data:
            if used >= num_batches:
                break
            if 'inputs' in batch and isinstance(batch['inputs'], list):  # a dataloader's batch
                batch = model.data_preprocessor(batch, True)
            if per_sample:
                model.zero_grad(set_to_none=True)
            _loss(model, batch).backward()
            if per_sample:
                imp.accumulate_grad(model)
            used += 1
    if used == 0:
        raise ValueError(f'importance {type(imp).__name__} needs data, but the given '
                         'data (dataloader) yielded no batch')
