"""The forwards a host model is traced, counted and timed through.

:func:`tensor_forward` is the pruner's graph: the host's ``mode='tensor'`` forward,
widened by the :data:`FORWARD_RULES` so that every layer that owns weights is seen by
autograd, and with the op rules of :mod:`.rules` active. :func:`inference_forward`
is what a deployed model runs (FLOPs and latency are counted on it).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from ..custom_layers import custom_pruner_of
from .batches import INFERENCE_PROPOSALS, fixed_proposals, inference_proposals
from .rules import TraceContext, TraceMode
from .tensors import first_tensor, flatten_tensors


@contextlib.contextmanager
def tracing_state(model: nn.Module) -> Iterator[None]:
    """Eval mode, grads enabled, every parameter trainable and no in-place activation or
    dropout module; all restored after.

    In-place modules go out-of-place because an in-place op on a layer's output that
    is a view (a Linear on 3-D tokens, then mmcv's FFN's ``ReLU(inplace=True)``)
    rebases the view's autograd history: the node the forward hook saw as the layer's
    output leaves the graph, and neither torch-pruning nor :func:`find_output_layers`
    can connect the layer to its consumers (the feed-forward layers of the DETR
    family's transformers were left whole and taken for output layers).
    """
    modes = {m: m.training for m in model.modules()}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    inplace = [m for m in model.modules()
               if getattr(m, 'inplace', None) is True and not any(True for _ in m.children())]
    # mmdet/mmseg backbones re-freeze their frozen stages in train()/eval(); torch-pruning
    # calls model.eval() while tracing, so plain nn.Module.train stands in meanwhile
    overridden = [m for m in model.modules() if type(m).train is not nn.Module.train]
    try:
        for m in overridden:
            m.train = types.MethodType(nn.Module.train, m)
        for m in inplace:
            m.inplace = False
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for m in inplace:
            m.inplace = True
        for m in overridden:
            m.__dict__.pop('train', None)
        for m, mode in modes.items():
            m.training = mode
        # pruning replaces parameters with new objects, so match them by name
        params = dict(model.named_parameters())
        for name in frozen:
            if name in params:
                params[name].requires_grad_(False)






@functools.lru_cache(maxsize=None)
def _forward_source(cls: type) -> str:
    """Source of ``cls.forward`` (read once per class), or '' when unavailable."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ''


def forward_reads(cls: type) -> set:
    """Attribute names ``forward`` reads as ``self.<name>``."""
    return set(re.findall(r'self\.(\w+)', _forward_source(cls)))


def _branches_on_training(cls: type) -> bool:
    return 'self.training' in _forward_source(cls)


def _required_args(fn) -> List[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


class Patches:
    """Attributes set on objects for one forward, put back by :meth:`restore`."""

    def __init__(self) -> None:
        self.saved: List[Tuple[Any, str, Any]] = []

    def __call__(self, obj, name: str, fn) -> None:
        self.saved.append((obj, name, obj.__dict__.get(name, None)))
        setattr(obj, name, fn)

    def restore(self) -> None:
        for obj, name, old in reversed(self.saved):
            if old is None:
                delattr(obj, name)
            else:
                setattr(obj, name, old)
        self.saved.clear()


def two_stage_rpn(model: nn.Module) -> Optional[nn.Module]:
    """The RPN of a two-stage detector (a dense head feeding a RoI head), else None."""
    rpn_head = getattr(model, 'rpn_head', None)
    try:
        from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
    except ImportError:  # mmdet is an extra: an mmseg user may not have it
        BaseDenseHead = ()
    if rpn_head is not None and getattr(model, 'roi_head', None) is not None \
            and isinstance(rpn_head, BaseDenseHead):
        return rpn_head
    return None


def host_quirks(model: nn.Module, batch: Dict[str, Any], patch: Patches) -> None:
    """Make the host's tensor mode run the inference graph where it does not."""
    head = getattr(model, 'decode_head', None)
    if isinstance(head, nn.Module) and 'batch_data_samples' in _required_args(head.forward):
        head_forward = head.forward  # MaskFormer-style heads need the samples in tensor mode

        def forward_with_samples(x, *args, **kwargs):
            if not args and not kwargs:
                args = (batch['data_samples'],)
            return head_forward(x, *args, **kwargs)

        patch(head, 'forward', forward_with_samples)
    if isinstance(head, nn.ModuleList) and hasattr(model, 'encode_decode'):
        # cascade segmentors: the host's tensor mode feeds the last head (PointRend's
        # point head) the wrong inputs; its inference path is the real graph
        metas = [s.metainfo for s in batch['data_samples']]
        patch(model, '_forward', lambda inputs, data_samples=None:
              model.encode_decode(inputs, metas))


@dataclass
class Widening:
    """What the forward rules set up for one traced forward: attribute patches, hooks,
    extra output tensors, and (for the rules after ``mode``) the op-rule mode."""

    model: nn.Module
    batch: Dict[str, Any]
    patch: Patches = field(default_factory=Patches)
    handles: List[Any] = field(default_factory=list)
    extra: List[Any] = field(default_factory=list)
    mode: Optional[TraceMode] = None


@dataclass(frozen=True)
class ForwardRule:
    """A named change to the traced forward; ``after_mode`` rules run once the op-rule
    mode exists (they add to its kept features)."""

    name: str
    fn: Callable[[Widening], None]
    after_mode: bool = False


#: every forward rule of :func:`tensor_forward`, in the order they are set up
FORWARD_RULES: List[ForwardRule] = []


def forward_rule(after_mode: bool = False):
    def register(fn):
        FORWARD_RULES.append(ForwardRule(fn.__name__, fn, after_mode))
        return fn
    return register


@forward_rule()
def rpn_outputs(w: Widening) -> None:
    """Two-stage detectors (Faster / Mask / Cascade R-CNN ...): the RPN's outputs are
    traced, and the RoI heads get a few fixed proposals, so random weights that yield
    no proposals still trace them (and the graph does not run through NMS). Cascade
    RPN has stages and no forward: its stages' own outputs are the graph."""
    rpn_head = two_stage_rpn(w.model)
    if rpn_head is None:
        return
    host_predict = rpn_head.predict

    def rpn_predict(x, data_samples, rescale=False, **kwargs):
        if type(rpn_head).forward is nn.Module.forward:  # Cascade RPN: stages, no forward
            # its predictions are detached; the stages' own outputs are the graph
            stages = [stage for child in rpn_head.children()
                      if isinstance(child, nn.ModuleList) for stage in child]
            hooks = [stage.register_forward_hook(lambda mod, i, o: w.extra.append(o))
                     for stage in stages]
            try:
                host_predict(x, data_samples, rescale=False, **kwargs)
            finally:
                for h in hooks:
                    h.remove()
        else:
            w.extra.append(rpn_head(x))
        return fixed_proposals(data_samples)

    w.patch(rpn_head, 'predict', rpn_predict)


@forward_rule()
def auxiliary_heads(w: Widening) -> None:
    """Segmentors' loss-only auxiliary heads (FCN heads of PSPNet, DeepLabV3+, UPerNet
    ...) run on the same features, so their layers are pruned with the backbone."""
    model = w.model
    aux = getattr(model, 'auxiliary_head', None)
    if aux is None or not hasattr(model, 'extract_feat'):
        return
    extract_feat = model.extract_feat

    def extract_and_aux(inputs):
        x = extract_feat(inputs)
        heads = aux if isinstance(aux, nn.ModuleList) else [aux]
        for head in heads:
            w.extra.append(head(x))
        return x

    w.patch(model, 'extract_feat', extract_and_aux)


@forward_rule()
def inference_graph(w: Widening) -> None:
    """Where the host's tensor mode does not run the inference graph (MaskFormer-style
    heads need the samples; PointRend's cascade is fed the wrong inputs), see
    :func:`host_quirks`."""
    host_quirks(w.model, w.batch, w.patch)


@forward_rule()
def training_branches(w: Widening) -> None:
    """mmseg parts with training-only branches (DDRNet's and PIDNet's auxiliary outputs)
    take them while tracing, so the layers feeding them are pruned consistently; their
    children (norms, dropout) stay in eval mode."""
    model = w.model
    for part in ('backbone', 'decode_head'):
        module = getattr(model, part, None)
        if hasattr(model, 'decode_head') and isinstance(module, nn.Module) \
                and not module.training and _branches_on_training(type(module)):
            w.patch(module, 'training', True)


@forward_rule()
def detached_rois(w: Widening) -> None:
    """RoIs are coordinates, not features: cascade heads (Cascade R-CNN, HTC, Sparse
    R-CNN) compute a stage's RoIs from the previous stage's box regression, which
    would couple box deltas with feature channels. The RoIs given to RoI extractors
    are detached (and traced as outputs when an earlier stage regressed them)."""
    try:
        from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor
    except ImportError:  # mmdet is an extra: an mmseg user may not have it
        return

    def detach_rois(module, args):
        if len(args) >= 2 and isinstance(args[1], torch.Tensor):
            if args[1].grad_fn is not None:  # regressed by an earlier stage: keep it traced
                w.extra.append(args[1])
            return (args[0], args[1].detach(), *args[2:])
        return None

    w.handles += [m.register_forward_pre_hook(detach_rois) for m in w.model.modules()
                  if isinstance(m, BaseRoIExtractor)]


def _detached_output(module, inputs, output):
    return output.detach()


@forward_rule()
def deformable_offsets(w: Widening) -> None:
    """Offsets (and masks) of deformable convs (DCN, DCNv2 backbones) are coordinates
    too; the layer's handler prunes the input channels of its own offset conv with its
    own, so the offset conv's output is detached."""
    w.handles += [m.conv_offset.register_forward_hook(_detached_output)
                  for m in w.model.modules() if custom_pruner_of(m) is not None
                  and isinstance(getattr(m, 'conv_offset', None), nn.Module)]


@forward_rule()
def external_offsets(w: Widening) -> None:
    """Offsets / masks passed into a deformable conv from outside (DyHead, RepPoints,
    VFNet): the layers predicting them keep their channels, as outputs do."""
    def detach_offsets(module, args, kwargs):
        def cut(t):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                w.extra.append(t)
                return t.detach()
            return t
        return (tuple(args[:1]) + tuple(map(cut, args[1:])),
                {k: cut(v) if k in ('offset', 'mask') else v for k, v in kwargs.items()})

    w.handles += [m.register_forward_pre_hook(detach_offsets, with_kwargs=True)
                  for m in w.model.modules() if custom_pruner_of(m) is not None]


@forward_rule(after_mode=True)
def grouped_convs(w: Widening) -> None:
    """Grouped convs other than plain depthwise ones (ResNeSt's split attention,
    BiSeNetV2's depthwise expansion) keep the channels on both sides: torch-pruning
    1.6.1 mis-indexes their input channels."""
    mode = w.mode

    def keep_grouped(module, inputs, output):
        for t in (inputs[0] if inputs else None, output):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                mode.grad_fns.append(t.grad_fn)

    w.handles += [m.register_forward_hook(keep_grouped) for m in w.model.modules()
                  if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
                  and not m.groups == m.in_channels == m.out_channels]


def tensor_forward(model: nn.Module, batch: Dict[str, Any],
                   kept: Optional[List[Any]] = None,
                   context: Optional[TraceContext] = None) -> List[torch.Tensor]:
    """Run the host ``mode='tensor'`` forward, widened to every weighted layer.

    Returns the flat list of output tensors (including the outputs of RPN and
    auxiliary heads that the host's tensor mode leaves out). ``kept``, when
    given, receives the autograd nodes of features whose channels must stay
    (see :mod:`.rules`). ``context`` is the state the rules share during one prune
    (a fresh one when None); its concat layouts are those of this forward.
    """
    context = context if context is not None else TraceContext()
    w = Widening(model, batch)
    rules = [r for r in FORWARD_RULES if context.enabled(r.name)]
    for rule in rules:
        if not rule.after_mode:
            rule.fn(w)
    w.mode = TraceMode(model, context)
    context.concat_layout.clear()
    for rule in rules:
        if rule.after_mode:
            rule.fn(w)
    try:
        with w.mode:
            out = model(batch['inputs'], batch['data_samples'], mode='tensor')
    finally:
        w.mode.close()
        if kept is not None:
            kept.extend(w.mode.grad_fns)
        for h in w.handles:
            h.remove()
        w.patch.restore()
    return flatten_tensors([out, w.extra, w.mode.operands])


def inference_forward(model: nn.Module, batch: Dict[str, Any]) -> List[torch.Tensor]:
    """The forward a deployed model runs: the host's own ``mode='tensor'``.

    Unlike :func:`tensor_forward` (the pruner's graph) it leaves out auxiliary heads
    and training-only branches. A two-stage detector's RPN predicts (decoding and NMS
    included), then its RoI head gets :func:`inference_proposals`, as many as the RPN's
    ``test_cfg.max_per_img`` (1000 in mmdet's R-CNN configs), so latency and FLOPs
    count a full RoI head, the same for every model compared. This is the forward
    the benchmarks and ``tools/test.py`` time.
    """
    patch = Patches()
    rpn_head = two_stage_rpn(model)
    if rpn_head is not None:
        host_predict = rpn_head.predict
        cfg = getattr(rpn_head, 'test_cfg', None) or {}
        num = cfg.get('max_per_img', INFERENCE_PROPOSALS) if hasattr(cfg, 'get') \
            else INFERENCE_PROPOSALS

        def rpn_predict(x, data_samples, rescale=False, **kwargs):
            host_predict(x, data_samples, rescale=False, **kwargs)  # its time counts
            return inference_proposals(data_samples, num, first_tensor(x).device)

        patch(rpn_head, 'predict', rpn_predict)
    host_quirks(model, batch, patch)
    try:
        out = model(batch['inputs'], batch['data_samples'], mode='tensor')
    finally:
        patch.restore()
    return flatten_tensors(out)
