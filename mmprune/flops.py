"""FLOPs (MACs) at the full example input of the forward a deployed model runs.

What is counted is :func:`mmprune.tracing.inference_forward`: the host's own
``mode='tensor'`` forward, without auxiliary heads, and for a two-stage detector
its RoI head on as many proposals as its RPN's ``test_cfg.max_per_img`` (1000 in
mmdet's R-CNN configs), which is what ``target_flops`` aims at. Where the host's
tensor mode fails, the pruner's widened graph (:func:`mmprune.tracing.tensor_forward`)
is counted instead, with a warning.

Each layer's count is torch-pruning's own formula (``tp.utils.op_counter``),
applied to the shapes the layer saw. Counting with torch-pruning's
``count_ops_and_params`` directly would deep-copy the model and divide the total
by ``len()`` of the first forward argument, which for a host batch dict is its
number of keys (2), not its number of images.

After pruning, :class:`FlopsCounter` re-counts at the full size without running
the full-size forward: channel pruning leaves every spatial size as it was, so
a forward of the pruner's graph at the small tracing size (which pruning runs
anyway) tells which tensor dimensions changed, and
those dimensions are put into the shapes recorded at the full size. When a
changed dimension also depends on the input size (a flatten of channels with
space) or the layers ran a different number of times, it runs the full-size
forward instead, so the count is always the one a full forward gives.
``MMPRUNE_CHECK_FLOPS=1`` (the test suite sets it) checks every re-count
against a full forward.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from mmengine.logging import print_log

from .tracing import inference_forward, tensor_forward

Shapes = Any  # nested tuples of torch.Size / None, mirroring a layer's inputs or output
Record = Dict[str, List[Tuple[Shapes, Shapes]]]  # layer name -> (inputs, output) per call


def _formula(module: nn.Module) -> Optional[Callable]:
    """torch-pruning's counting hook for the module's class or its nearest base."""
    from torch_pruning.utils import op_counter
    for cls in type(module).__mro__:
        fn = op_counter.CUSTOM_MODULES_MAPPING.get(cls) or op_counter.MODULES_MAPPING.get(cls)
        if fn is not None:
            return fn
    return None


def _counted_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """Layers with a formula; the layers inside one are its own business (as in
    torch-pruning's counter, which does not descend into a counted module)."""
    out: Dict[str, nn.Module] = {}
    inside = None  # prefix of the counted layer whose submodules follow (pre-order walk)
    for name, m in model.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if _formula(m) is not None:
            out[name], inside = m, name + '.'
    return out


def _shapes(x: Any) -> Shapes:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (tuple, list)):
        return tuple(_shapes(v) for v in x)
    return None


def _meta(shapes: Shapes) -> Any:
    if shapes is None:
        return None
    if all(isinstance(s, int) for s in shapes):
        return torch.empty(shapes, device='meta')
    return tuple(_meta(s) for s in shapes)


def _positional_qkv(module: nn.Module, args: tuple, kwargs: dict):
    """mmcv calls nn.MultiheadAttention with query=/key=/value= keywords; the
    formula reads them from the positional inputs."""
    if not args and 'query' in kwargs:
        args = tuple(kwargs.pop(k) for k in ('query', 'key', 'value'))
    return args, kwargs


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[Record]:
    """Record each counted layer's shapes in the forwards run inside the block."""
    record: Record = {}
    handles = []

    def hook_for(name: str):
        def hook(module, args, output):
            record.setdefault(name, []).append((_shapes(args), _shapes(output)))
        return hook

    for name, m in _counted_layers(model).items():
        if isinstance(m, nn.MultiheadAttention):
            handles.append(m.register_forward_pre_hook(_positional_qkv, with_kwargs=True))
        handles.append(m.register_forward_hook(hook_for(name)))
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def record_shapes(model: nn.Module, batch: Dict[str, Any],
                  forward: Optional[Callable] = None) -> Record:
    """Run ``forward`` once, recording each counted layer's shapes. None: the
    inference forward, or the pruner's graph where the host's tensor mode fails
    on the model (with a warning, once per model class)."""
    return _counted_record(model, batch)[0] if forward is None else \
        _record(model, batch, forward)


#: RoI feature extractors: no FLOPs formula, and their outputs' shapes do not depend
#: on their values, so a count runs them as zeros of that shape (on 1000 proposals
#: mmcv's CPU RoIAlign takes half of a Faster R-CNN forward)
ROI_LAYERS = ('RoIAlign', 'RoIPool')


def _counted_record(model: nn.Module, batch: Dict[str, Any]) -> Tuple[Record, Callable]:
    """(shapes, the forward that ran them) of the forward FLOPs count by default."""
    try:
        return _record(model, batch, inference_forward), inference_forward
    except Exception as e:  # noqa: BLE001 - the host's tensor mode, any failure
        cls = type(model)
        if cls not in _TENSOR_MODE_FAILS:  # warned once per class
            _TENSOR_MODE_FAILS.add(cls)
            print_log(f'[mmprune] {cls.__name__}: FLOPs are counted on the graph the '
                      f'pruner traces (auxiliary heads included, a RoI head on 4 '
                      f'proposals) because the host\'s mode="tensor" forward fails: '
                      f'{type(e).__name__}: {str(e)[:200]}',
                      logger='current', level=30)
        return _record(model, batch, tensor_forward), tensor_forward


def _record(model: nn.Module, batch: Dict[str, Any], forward: Callable) -> Record:
    """Each counted layer's shapes in one ``forward(model, batch)``."""
    from torch.nn.modules.utils import _pair
    patched = []

    def shape_only(module):
        def zeros(input, rois, *args, **kwargs):
            return input.new_zeros(rois.shape[0], input.shape[1], *_pair(module.output_size))
        return zeros

    for m in model.modules():
        if type(m).__name__ in ROI_LAYERS and hasattr(m, 'output_size'):
            m.forward = shape_only(m)
            patched.append(m)
    try:
        with recording(model) as record, torch.no_grad():
            forward(model, batch)
    finally:
        for m in patched:
            del m.forward
    return record


_TENSOR_MODE_FAILS: set = set()  # model classes already warned about


class _Counter:
    """Stands for a layer in torch-pruning's formula, which adds to ``__flops__``."""

    def __init__(self, module: nn.Module) -> None:
        object.__setattr__(self, '_module', module)
        self.__flops__ = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, '_module'), name)


def layer_flops(model: nn.Module, record: Record) -> Dict[str, int]:
    """MACs of each recorded layer (all its calls, all images) from recorded
    shapes and the layers' current attributes."""
    modules = dict(model.named_modules())
    out = {}
    for name, calls in record.items():
        module = modules[name]
        formula, acc = _formula(module), _Counter(module)
        for inputs, output in calls:
            formula(acc, _meta(inputs), _meta(output))
        out[name] = acc.__flops__
    return out


def flops_of(model: nn.Module, record: Record, images: int = 1) -> int:
    """MACs per image from recorded shapes and the layers' current attributes."""
    return int(sum(layer_flops(model, record).values()) // max(images, 1))


def _images(batch: Dict[str, Any]) -> int:
    inputs = batch['inputs']
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(inputs)


def count_flops_params(model: nn.Module, batch: Dict[str, Any],
                       forward: Optional[Callable] = None) -> Tuple[int, int]:
    """(MACs per image, params) of ``forward`` on ``batch``; by default the forward a
    deployed model runs (see :func:`record_shapes`)."""
    flops = flops_of(model, record_shapes(model, batch, forward), _images(batch))
    return flops, sum(p.numel() for p in model.parameters())


def _transfer(full: Shapes, small: Shapes, now: Shapes) -> Shapes:
    """``full`` with the dimensions that changed from ``small`` to ``now`` replaced;
    raises ValueError when a changed dimension also differs between the sizes."""
    if full is None or small is None or now is None:
        if not (full is None and small is None and now is None):
            raise ValueError('inputs differ')
        return None
    if len(full) != len(small) or len(now) != len(small):
        raise ValueError('ranks differ')
    if all(isinstance(s, int) for s in full):
        out = []
        for f, s, n in zip(full, small, now):
            if n == s:
                out.append(f)
            elif f == s:  # a channel dimension: the same at both input sizes
                out.append(n)
            else:
                raise ValueError('a dimension depends on both channels and input size')
        return tuple(out)
    return tuple(_transfer(f, s, n) for f, s, n in zip(full, small, now))


class FlopsCounter:
    """FLOPs of a model at ``batch`` (the full size), re-counted after pruning.

    Args:
        model: the dense model.
        batch: the full-size example batch the FLOPs are counted at.
        small: a batch at the small tracing size; re-counts then run the pruner's
            graph (:func:`tensor_forward`) at this size and carry the channel
            counts that changed into the full-size shapes (see the module
            docstring). None: every count runs the full-size forward.
        small_record: the dense model's shapes at ``small`` on the pruner's graph,
            when a forward already recorded them (:func:`recording`).
    """

    def __init__(self, model: nn.Module, batch: Dict[str, Any],
                 small: Optional[Dict[str, Any]] = None,
                 small_record: Optional[Record] = None) -> None:
        self.batch, self.images = batch, _images(batch)
        self.shape = tuple(batch['inputs'].shape[-2:])  # of the forward last run
        # self.forward: what is counted (the inference forward unless it fails)
        self.full, self.forward = _counted_record(model, batch)
        self.dense = flops_of(model, self.full, self.images)
        self.small = small if small is not None and small is not batch else None
        self.small_dense = None if self.small is None else \
            small_record or record_shapes(model, small, tensor_forward)
        self.full_forwards = 0  # re-counts that needed the full-size forward

    def count(self, model: nn.Module) -> int:
        """MACs per image of ``model`` (the dense one, pruned) at the full size."""
        if self.small is not None:
            self.shape = tuple(self.small['inputs'].shape[-2:])
            now = record_shapes(model, self.small, tensor_forward)
            try:
                # the pruner's graph runs every layer the inference forward runs (and
                # auxiliary heads, which are not counted), the same number of times
                if set(now) != set(self.small_dense) or not set(self.full) <= set(now) or any(
                        len(now[k]) != len(self.small_dense[k]) or
                        len(now[k]) != len(self.full[k]) for k in self.full):
                    raise ValueError('layers ran a different number of times')
                full = {k: [(_transfer(f[0], s[0], n[0]), _transfer(f[1], s[1], n[1]))
                            for f, s, n in zip(self.full[k], self.small_dense[k], now[k])]
                        for k in self.full}
            except ValueError:
                full = None
            if full is not None:
                flops = flops_of(model, full, self.images)
                if os.environ.get('MMPRUNE_CHECK_FLOPS') == '1':
                    real = count_flops_params(model, self.batch, self.forward)[0]
                    assert flops == real, f'FLOPs re-count {flops} != full forward {real}'
                return flops
        self.full_forwards += 1
        self.shape = tuple(self.batch['inputs'].shape[-2:])
        return count_flops_params(model, self.batch, self.forward)[0]
