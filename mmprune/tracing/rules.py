"""Op rules: what torch-pruning cannot see in a traced forward, made explicit.

torch-pruning builds its dependency graph from the autograd graph of one forward.
Some ops couple or fix channels in ways that graph does not show, or that
torch-pruning 1.6.1 maps wrongly. Each rule below is one named unit: it watches one
kind of op while the model is traced (through a ``TorchFunctionMode``) and either
keeps the channels of the features involved (their autograd nodes go to
``TraceMode.grad_fns``; the layers producing them are then kept like output layers),
turns an operand into a constant for the graph (detached, and traced as an extra
output so the layers computing it stay in the graph), or records what a later fix
needs (:func:`concat_layout`). The docstring of each rule names the model families
that need it.

Rules live in :data:`OP_RULES`, in the order they run; ``TraceContext.disabled``
switches rules off by name (the tests show what each one fixes). State shared by
the rules of one prune (and by the torch-pruning fixes that read it) is a
:class:`TraceContext`, not module globals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from .tensors import channel_dim, detach_all, first_tensor, flatten_tensors

BINARY_OPS = frozenset({
    'add', 'add_', '__add__', '__radd__', '__iadd__', 'sub', 'sub_', '__sub__', '__rsub__',
    '__isub__', 'mul', 'mul_', '__mul__', '__rmul__', '__imul__', 'div', 'div_',
    '__truediv__', '__rtruediv__', '__itruediv__'})
PRODUCT_OPS = frozenset({'matmul', '__matmul__', '__rmatmul__', 'bmm', 'einsum', 'baddbmm'})
CAT_OPS = frozenset({'cat', 'concat', 'concatenate'})
DATA_OPS = frozenset({'clone', 'detach', 'reshape', 'view', 'permute', 'transpose', 'flatten',
                      '__getitem__', 'repeat', 'expand', 'unsqueeze', 'squeeze', 'einsum',
                      'matmul', 'bmm'})
SPLIT_OPS = frozenset({'split', 'split_with_sizes', 'chunk', 'tensor_split'})


@dataclass
class TraceContext:
    """What the rules of one prune share.

    Attributes:
        strict_token_maps: keep the channels of every reshape of tokens to maps (a
            shape taken from another tensor cannot follow a pruned width), instead of
            only those that are not a plain spatial unflatten (:func:`tokens_to_maps`).
        relaxed_token_maps: how many reshapes were let through while not strict, so
            that a prune failing with them can be retried strict.
        concat_layout: the channel concats of the last forward traced with this
            context: autograd node -> its pieces in order, ``(traced, channels)``
            (read by :mod:`mmprune.tp_adapter`'s concat fix).
        disabled: names of rules (op rules and forward rules) switched off.
    """

    strict_token_maps: bool = False
    relaxed_token_maps: int = 0
    concat_layout: Dict[Any, List[Tuple[bool, int]]] = field(default_factory=dict)
    disabled: FrozenSet[str] = frozenset()

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled


@dataclass(frozen=True)
class OpRule:
    """A rule run for the ops named in ``ops``: ``before`` the op (it may return new
    arguments) or after it (it sees the output)."""

    name: str
    ops: FrozenSet[str]
    fn: Callable[..., Any]
    before: bool = False


#: every op rule, in the order they run (the ``before`` ones, then the op, then the others)
OP_RULES: List[OpRule] = []


def op_rule(ops: Iterable[str], before: bool = False):
    """Register the decorated function as the op rule of its name."""
    def register(fn):
        OP_RULES.append(OpRule(fn.__name__, frozenset(ops), fn, before))
        return fn
    return register


def _traced(t) -> bool:
    return isinstance(t, torch.Tensor) and t.grad_fn is not None


@op_rule(DATA_OPS, before=True)
def weight_as_data(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """A layer's weight used as a feature (KNet turns the FCN head's classifier into its
    first kernels): that layer's channels are fixed on both sides."""
    trace.weight_readers.update(
        trace.weights[id(a)] for a in flatten_tensors(list(args))
        if id(a) in trace.weights and trace.weights[id(a)] not in trace.active)
    return args


@op_rule(PRODUCT_OPS, before=True)
def feature_product(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """A product of two features (non-local and attention blocks written with
    ``matmul`` / ``bmm``: NonLocal, DANet, CCNet, Twins, Swin's window attention) mixes
    channel and spatial indices in ways whose index mapping explodes torch-pruning's
    grouping. Its operands are detached, so the product is a constant to the graph;
    they become extra outputs and keep their channels. A feature times a constant
    matrix (EMANet's bases buffer) contracts its channels in a way torch-pruning
    cannot map: it keeps them too. ``nn.MultiheadAttention`` is left to torch-pruning's
    own head rules."""
    if trace.inside_mha:
        return args
    feats = [a for a in flatten_tensors(list(args)) if a.grad_fn is not None]
    if len(feats) >= 2:
        trace.grad_fns += [f.grad_fn for f in feats]
        trace.operands += feats
        return detach_all(args)
    if feats and any(a.grad_fn is None and a.dim() >= 2 for a in flatten_tensors(list(args))):
        trace.grad_fns.append(feats[0].grad_fn)
        trace.operands.append(feats[0])
    return args


@op_rule(BINARY_OPS, before=True)
def broadcast_gate(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """A one-channel feature broadcast over a wide one (PIDNet's boundary attention,
    BiSeNetV2's gates) is not a channel coupling: it is cut from the graph and traced
    as an extra output."""
    if len(args) < 2:
        return args
    a, b = args[0], args[1]
    if not (_traced(a) and _traced(b)) or a.dim() != b.dim() or a.dim() < 3:
        return args
    ca, cb = a.shape[channel_dim(a)], b.shape[channel_dim(b)]
    if ca == cb or 1 not in (ca, cb):
        return args
    narrow = 0 if ca == 1 else 1
    trace.grad_fns.append(args[narrow].grad_fn)
    trace.operands.append(args[narrow])
    args = list(args)
    args[narrow] = args[narrow].detach()
    return tuple(args)


@op_rule(SPLIT_OPS)
def channel_split(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """Channel chunks (Res2Net's hierarchical convs): torch-pruning 1.6.1 maps their index
    ranges out of bounds once a chunk meets a concat or another chunk's branch, so the
    split feature keeps its channels (the branches still prune)."""
    if args and _traced(args[0]) and args[0].dim() == 4 \
            and kwargs.get('dim', args[2] if len(args) > 2 else 0) in (1, -3) \
            and isinstance(out, (tuple, list)) and len(out) > 1:
        trace.grad_fns.append(args[0].grad_fn)


@op_rule({'__getitem__'})
def channel_slice(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """A channel range of a feature (dynamic convs cut one Linear's output into weights:
    KNet, Sparse R-CNN, QueryInst): torch-pruning 1.6.1 maps a negative or offset range
    out of bounds, so the feature keeps its channels."""
    if len(args) == 2 and _traced(args[0]) and slices_channels(args[0], args[1]):
        trace.grad_fns.append(args[0].grad_fn)


@op_rule(CAT_OPS)
def concat_layout(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """Records each 4-D channel concat's pieces (traced or not, and their widths) in
    ``TraceContext.concat_layout``: a concat that also takes an untraced tensor (CGNet
    concatenates the down-sampled image; ViT necks after a position embedding) needs
    its true offsets (:mod:`mmprune.tp_adapter`)."""
    if not _traced(out):
        return
    tensors = args[0] if args else kwargs.get('tensors', ())
    dim = kwargs.get('dim', args[1] if len(args) > 1 else 0)
    if out.dim() != 4 or not isinstance(dim, int) or dim % 4 != 1:
        return
    trace.context.concat_layout[out.grad_fn] = [(t.grad_fn is not None, int(t.shape[1]))
                                                for t in tensors]


@op_rule({'reshape', 'view'})
def tokens_to_maps(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """Tokens (B, C, H*W) reshaped to maps. Channel-first tokens to maps of the same
    width (mmcv's ``nlc_to_nchw``, which takes the width from the tokens: SegFormer,
    PVT) map their channels one to one and prune; a reshape to a shape taken from
    elsewhere (DPT's reassemble blocks reshape to the backbone's width) keeps them. In
    strict mode (the retry of a prune that failed with them let through) every such
    reshape keeps its channels."""
    if not (isinstance(out, torch.Tensor) and args and _traced(args[0])
            and args[0].dim() == 3 and out.dim() == 4):
        return
    context = trace.context
    if unflattens_space(args[0], out) and not context.strict_token_maps:
        context.relaxed_token_maps += 1
    else:
        trace.grad_fns.append(args[0].grad_fn)


@op_rule(BINARY_OPS)
def constant_operand(trace: 'TraceMode', name: str, args, kwargs, out=None):
    """An element-wise op between a traced feature and a constant tensor (no autograd
    history: DETR's sine positional encodings, fixed grids) with a full channel
    dimension fixes that feature's channels."""
    if len(args) < 2 or not _traced(out):
        return
    a, b = args[0], args[1]
    for t, c in ((a, b), (b, a)):
        if isinstance(t, torch.Tensor) and isinstance(c, torch.Tensor) \
                and t.requires_grad and not c.requires_grad and c.dim() == t.dim() \
                and t.dim() >= 2 and c.shape[channel_dim(t)] == t.shape[channel_dim(t)] > 1:
            trace.grad_fns.append(out.grad_fn)


def unflattens_space(tokens: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether ``out`` is channel-first ``tokens`` (B, C, H*W) with only the
    spatial dimension split (as mmcv's ``nlc_to_nchw`` does)."""
    return tuple(out.shape[:2]) == tuple(tokens.shape[:2]) \
        and out.shape[2] * out.shape[3] == tokens.shape[2]


def slices_channels(t: torch.Tensor, index) -> bool:
    """Whether ``t[index]`` takes part of the channel dimension with a slice."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is None for i in index) or t.dim() < 2:
        return False
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (t.dim() - len(index) + 1) + index[k + 1:]
    dim = channel_dim(t)
    if dim >= len(index) or not isinstance(index[dim], slice):
        return False
    start, stop, step = index[dim].indices(t.shape[dim])
    return (start, stop, step) != (0, t.shape[dim], 1)


class TraceMode(TorchFunctionMode):
    """Runs the enabled :data:`OP_RULES` on every torch function of one traced forward.

    The autograd nodes of features whose channels must stay are collected in
    ``grad_fns``; detached operands, traced as extra outputs, in ``operands``.
    """

    def __init__(self, model: nn.Module, context: Optional[TraceContext] = None) -> None:
        super().__init__()
        self.context = context if context is not None else TraceContext()
        self.grad_fns: List[Any] = []
        self.operands: List[torch.Tensor] = []
        self.inside_mha = 0
        self.weights: Dict[int, nn.Module] = {}  # id(weight) -> its conv / linear layer
        self.weight_readers: set = set()
        self.active: set = set()  # layers inside their own forward (ConvWS reads its weight)
        self._io: Dict[nn.Module, List[Any]] = {}  # layer -> grad_fns of its last input/output
        self._handles = []
        rules = [r for r in OP_RULES if self.context.enabled(r.name)]
        self._before: Dict[str, List[OpRule]] = {}
        self._after: Dict[str, List[OpRule]] = {}
        for rule in rules:
            table = self._before if rule.before else self._after
            for op in rule.ops:
                table.setdefault(op, []).append(rule)
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                self._handles.append(m.register_forward_pre_hook(self._enter))
                self._handles.append(m.register_forward_hook(self._leave))
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) \
                    and isinstance(getattr(m, 'weight', None), torch.Tensor):
                self.weights[id(m.weight)] = m
                self._handles.append(m.register_forward_pre_hook(self._start))
                self._handles.append(m.register_forward_hook(self._record_io))

    def _enter(self, *args):
        self.inside_mha += 1

    def _leave(self, *args):
        self.inside_mha -= 1

    def _start(self, module, inputs):
        self.active.add(module)

    def _record_io(self, module, inputs, output):
        self.active.discard(module)
        self._io[module] = [t.grad_fn for t in (first_tensor(inputs), first_tensor(output))
                            if t is not None and t.grad_fn is not None]

    def close(self) -> None:
        """Remove the hooks; layers whose weight was read as data keep both sides."""
        for h in self._handles:
            h.remove()
        for m in self.weight_readers:
            self.grad_fns += self._io.get(m, [])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        for rule in self._before.get(name, ()):
            args = rule.fn(self, name, args, kwargs)
        out = func(*args, **kwargs)
        for rule in self._after.get(name, ()):
            rule.fn(self, name, args, kwargs, out)
        return out
