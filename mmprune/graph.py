"""Tracing an OpenMMLab model for torch-pruning's dependency graph.

A host model is traced through its ``mode='tensor'`` forward, widened so that
every layer that owns weights is seen by autograd:

* frozen layers (``requires_grad=False``) are made trainable while tracing;
* loss-only auxiliary heads of segmentors are run on the same features;
* the RPN of two-stage detectors is run, and the RoI heads get a small fixed
  set of proposals, so random weights that yield no proposals still trace them
  (and the graph does not run through NMS).

Layers whose output channels reach the model's outputs without passing through
another channel-mixing layer define the outputs (class scores, box
regressions, segmentation logits); they are found by walking the autograd
graph back from the outputs and are never pruned.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import re
import types
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
import torch_pruning as tp
from mmengine.logging import print_log

from .custom_layers import CUSTOMIZED_PRUNERS, pruner_of


def task_of(model: nn.Module) -> str:
    """Return ``'det'`` or ``'seg'`` for an mmdet detector or mmseg segmentor."""
    try:
        from mmseg.models.segmentors import BaseSegmentor
        if isinstance(model, BaseSegmentor):
            return 'seg'
    except ImportError:  # mmseg is an extra: an mmdet user may not have it
        pass
    try:
        from mmdet.models.detectors import BaseDetector
        if isinstance(model, BaseDetector):
            return 'det'
    except ImportError:  # mmdet is an extra: an mmseg user may not have it
        pass
    raise TypeError(
        f'mmprune prunes mmdet detectors and mmseg segmentors, but got '
        f'{type(model).__name__}')


def _num_classes(model: nn.Module) -> int:
    counts = [m.num_classes for m in model.modules()
              if isinstance(getattr(m, 'num_classes', None), int) and m.num_classes > 0]
    return min(counts) if counts else 1


def config_input_shape(cfg) -> Optional[Tuple[int, int]]:
    """(h, w) of the first fixed-size Resize in the config's test pipeline."""
    if cfg is None:
        return None
    pipelines = []
    for key in ('test_dataloader', 'val_dataloader'):
        loader = cfg.get(key)
        if loader and loader.get('dataset') is not None:
            pipelines.append(loader['dataset'].get('pipeline') or [])
    pipelines.append(cfg.get('test_pipeline') or [])
    for pipeline in pipelines:
        for step in pipeline:
            if not isinstance(step, dict):
                continue
            scale = step.get('scale') or step.get('img_scale')
            if 'Resize' in str(step.get('type', '')) and scale:
                if isinstance(scale, int):
                    return scale, scale
                if isinstance(scale, (list, tuple)) and len(scale) == 2 \
                        and all(isinstance(s, int) for s in scale):
                    w, h = scale  # OpenMMLab scales are (w, h)
                    if step.get('keep_ratio', False):
                        return min(w, h), min(w, h) * max(w, h) // min(w, h)
                    return h, w
    return None


def _config_loads_masks(cfg) -> bool:
    """Whether the config's train pipeline loads instance masks.

    Box-only detectors that check ``'masks' in gt_instances`` (RTMDet's
    assigner) expect tensors there, so fake masks are only added where the
    real pipeline would add them; without a pipeline they are added.
    """
    if cfg is None:
        return True
    pipelines = []
    loader = cfg.get('train_dataloader')
    dataset = loader.get('dataset') if loader else None
    while isinstance(dataset, dict):  # RepeatDataset / MultiImageMixDataset wrap the real one
        if dataset.get('pipeline'):
            pipelines.append(dataset['pipeline'])
        dataset = dataset.get('dataset')
    pipelines.append(cfg.get('train_pipeline') or [])
    steps = [s for pipeline in pipelines for s in pipeline
             if isinstance(s, dict) and 'LoadAnnotations' in str(s.get('type', ''))]
    if not steps:
        return True
    return any(s.get('with_mask', False) for s in steps)


def _fake_sample(task: str, h: int, w: int, num_classes: int,
                 rng: np.random.Generator, with_mask: bool = True) -> Dict[str, Any]:
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    results: Dict[str, Any] = dict(
        img=img, img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
        scale_factor=(1.0, 1.0), flip=False, flip_direction=None, img_id=0,
        img_path='', seg_map_path='', reduce_zero_label=False)
    if task == 'seg':
        seg = np.zeros((h, w), dtype=np.uint8)
        for label in range(max(num_classes, 1)):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            seg[y0:y0 + h // 3, x0:x0 + w // 3] = label
        results['gt_seg_map'] = seg
        from mmseg.datasets.transforms import GenerateEdge  # PIDNet's boundary target
        return GenerateEdge()(results)
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    n = 3
    x0 = rng.uniform(0, w * 0.5, n)
    y0 = rng.uniform(0, h * 0.5, n)
    bw = rng.uniform(w * 0.2, w * 0.45, n)
    bh = rng.uniform(h * 0.2, h * 0.45, n)
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    seg = np.full((h, w), 255, dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype(np.int64)
    for i, (a, b, c, d) in enumerate(boxes.astype(int)):
        masks[i, b:d, a:c] = 1
        seg[b:d, a:c] = labels[i]
    results.update(
        gt_bboxes=HorizontalBoxes(boxes), gt_bboxes_labels=labels,
        gt_ignore_flags=np.zeros(n, dtype=bool), gt_seg_map=seg)
    if with_mask:
        results['gt_masks'] = BitmapMasks(masks, h, w)
    return results


def make_batch(model: nn.Module, cfg=None, input_shape: Optional[Sequence[int]] = None,
               batch_size: int = 1, training: bool = False, seed: int = 0) -> Dict[str, Any]:
    """A preprocessed batch for ``model(**batch, mode=...)``.

    The image size comes from ``input_shape`` (h, w) or else the config's test
    pipeline, then goes through the model's own ``data_preprocessor`` (so
    normalisation and ``pad_size_divisor`` apply). Ground truth (boxes, masks,
    semantic maps) is included so the same batch serves ``mode='loss'``.
    """
    task = task_of(model)
    if input_shape is None:
        input_shape = config_input_shape(cfg) or (512, 512)
    if isinstance(input_shape, int):
        input_shape = (input_shape, input_shape)
    h, w = int(input_shape[-2]), int(input_shape[-1])
    rng = np.random.default_rng(seed)
    num_classes = _num_classes(model)
    if task == 'det':
        from mmdet.datasets.transforms import PackDetInputs
        pack = PackDetInputs(meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                        'scale_factor', 'flip', 'flip_direction'))
    else:
        from mmseg.datasets.transforms import PackSegInputs
        pack = PackSegInputs()
    with_mask = _config_loads_masks(cfg)
    packed = [pack(_fake_sample(task, h, w, num_classes, rng, with_mask))
              for _ in range(batch_size)]
    if task == 'det' and getattr(model, 'roi_head', None) is not None \
            and getattr(model, 'rpn_head', None) is None:  # Fast R-CNN reads proposals
        for p, proposals in zip(packed, _fixed_proposals([p['data_samples'] for p in packed])):
            p['data_samples'].proposals = proposals
    data = dict(inputs=[p['inputs'] for p in packed],
                data_samples=[p['data_samples'] for p in packed])
    with torch.no_grad():
        out = model.data_preprocessor(data, training)
    for sample in out['data_samples']:  # mmseg sets it only when it pads training crops
        if 'batch_input_shape' not in sample.metainfo:
            sample.set_metainfo(dict(batch_input_shape=tuple(out['inputs'].shape[-2:])))
    return out


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


def _fixed_proposals(data_samples, num: int = 4, size: float = 32.0):
    """A few small boxes, the same for every image.

    Small boxes map to the finest FPN level in mmdet's RoI extractors, which
    keeps the traced graph (and torch-pruning's grouping) small; every level
    is coupled through the RPN anyway.
    """
    from mmengine.structures import InstanceData
    proposals = []
    for sample in data_samples:
        h, w = sample.metainfo.get('img_shape', sample.metainfo.get('batch_input_shape'))
        boxes = []
        for i in range(num):
            x0 = (w - size) * i / max(num - 1, 1)
            y0 = (h - size) * i / max(num - 1, 1)
            boxes.append([x0, y0, x0 + size, y0 + size])
        proposals.append(InstanceData(
            bboxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.ones(num),
            labels=torch.zeros(num, dtype=torch.long)))
    return proposals


def _flatten_tensors(obj) -> List[torch.Tensor]:
    out: List[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(_flatten_tensors(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(_flatten_tensors(v))
    elif hasattr(obj, 'to_dict') and callable(obj.to_dict):  # mmengine data elements
        out.extend(_flatten_tensors(obj.to_dict()))
    return out


@functools.lru_cache(maxsize=None)
def _forward_source(cls: type) -> str:
    """Source of ``cls.forward`` (read once per class), or '' when unavailable."""
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ''


def _forward_reads(cls: type) -> set:
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


def _detached_output(module, inputs, output):
    return output.detach()


class _Patches:
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


def _two_stage_rpn(model: nn.Module) -> Optional[nn.Module]:
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


def _host_quirks(model: nn.Module, batch: Dict[str, Any], patch: _Patches) -> None:
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


def tensor_forward(model: nn.Module, batch: Dict[str, Any],
                   kept: Optional[List[Any]] = None) -> List[torch.Tensor]:
    """Run the host ``mode='tensor'`` forward, widened to every weighted layer.

    Returns the flat list of output tensors (including the outputs of RPN and
    auxiliary heads that the host's tensor mode leaves out). ``kept``, when
    given, receives the autograd nodes of features whose channels must stay
    (see :class:`_TraceMode`).
    """
    extra: List[Any] = []
    patch = _Patches()
    rpn_head = _two_stage_rpn(model)
    if rpn_head is not None:

        host_predict = rpn_head.predict

        def rpn_predict(x, data_samples, rescale=False, **kwargs):
            if type(rpn_head).forward is nn.Module.forward:  # Cascade RPN: stages, no forward
                # its predictions are detached; the stages' own outputs are the graph
                stages = [stage for child in rpn_head.children()
                          if isinstance(child, nn.ModuleList) for stage in child]
                hooks = [stage.register_forward_hook(lambda mod, i, o: extra.append(o))
                         for stage in stages]
                try:
                    host_predict(x, data_samples, rescale=False, **kwargs)
                finally:
                    for h in hooks:
                        h.remove()
            else:
                extra.append(rpn_head(x))
            return _fixed_proposals(data_samples)

        patch(rpn_head, 'predict', rpn_predict)

    aux = getattr(model, 'auxiliary_head', None)
    if aux is not None and hasattr(model, 'extract_feat'):
        extract_feat = model.extract_feat

        def extract_and_aux(inputs):
            x = extract_feat(inputs)
            heads = aux if isinstance(aux, nn.ModuleList) else [aux]
            for head in heads:
                extra.append(head(x))
            return x

        patch(model, 'extract_feat', extract_and_aux)
    _host_quirks(model, batch, patch)
    # mmseg parts with training-only branches (DDRNet's and PIDNet's auxiliary outputs)
    # take them while tracing, so the layers feeding them are pruned consistently;
    # their children (norms, dropout) stay in eval mode
    for part in ('backbone', 'decode_head'):
        module = getattr(model, part, None)
        if hasattr(model, 'decode_head') and isinstance(module, nn.Module) \
                and not module.training and _branches_on_training(type(module)):
            patch(module, 'training', True)
    # RoIs are coordinates, not features: cascade heads compute a stage's RoIs from the
    # previous stage's box regression, which would couple box deltas with feature channels
    try:
        from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor
    except ImportError:  # mmdet is an extra: an mmseg user may not have it
        BaseRoIExtractor = ()

    def detach_rois(module, args):
        if len(args) >= 2 and isinstance(args[1], torch.Tensor):
            if args[1].grad_fn is not None:  # regressed by an earlier stage: keep it traced
                extra.append(args[1])
            return (args[0], args[1].detach(), *args[2:])
        return None

    handles = [m.register_forward_pre_hook(detach_rois) for m in model.modules()
               if isinstance(m, BaseRoIExtractor)]
    # offsets (and masks) of deformable convs are coordinates too; the layer's handler
    # prunes the input channels of its offset conv together with its own
    handles += [m.conv_offset.register_forward_hook(_detached_output) for m in model.modules()
                if pruner_of(m) is not None and isinstance(getattr(m, 'conv_offset', None),
                                                           nn.Module)]

    def detach_offsets(module, args, kwargs):
        # offsets / masks passed in from outside (DyHead, RepPoints, VFNet): the layers
        # predicting them keep their channels, as outputs do
        def cut(t):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                extra.append(t)
                return t.detach()
            return t
        return (tuple(args[:1]) + tuple(map(cut, args[1:])),
                {k: cut(v) if k in ('offset', 'mask') else v for k, v in kwargs.items()})

    handles += [m.register_forward_pre_hook(detach_offsets, with_kwargs=True)
                for m in model.modules() if pruner_of(m) is not None]
    mode = _TraceMode(model)
    CONCAT_LAYOUT.clear()

    def keep_grouped(module, inputs, output):
        # grouped convs other than plain depthwise ones (ResNeSt's split attention,
        # BiSeNetV2's depthwise expansion) keep the channels on both sides: torch-pruning
        # 1.6.1 mis-indexes their input channels
        for t in (inputs[0] if inputs else None, output):
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                mode.grad_fns.append(t.grad_fn)

    handles += [m.register_forward_hook(keep_grouped) for m in model.modules()
                if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1
                and not m.groups == m.in_channels == m.out_channels]
    try:
        with mode:
            out = model(batch['inputs'], batch['data_samples'], mode='tensor')
    finally:
        mode.close()
        if kept is not None:
            kept.extend(mode.grad_fns)
        for h in handles:
            h.remove()
        patch.restore()
    return _flatten_tensors([out, extra, mode.operands])


#: proposals per image :func:`inference_forward` gives a RoI head whose RPN's
#: ``test_cfg`` has no ``max_per_img``
INFERENCE_PROPOSALS = 1000


def inference_proposals(data_samples, num: int, device=None):
    """``num`` boxes per image, the same on every call: sizes log-uniform from 16
    pixels to the image's shorter side, aspect ratios 1:2 to 2:1, centres uniform
    (seed 0), clipped to the image. They spread over the FPN levels as real
    proposals do, and give a dense and a pruned model with random weights the same
    RoI-head work (their own RPNs would propose different boxes)."""
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(0)
    proposals = []
    for sample in data_samples:
        h, w = sample.metainfo.get('img_shape', sample.metainfo.get('batch_input_shape'))
        r = torch.rand(num, 4, generator=gen)
        scale = 16 * (max(min(h, w), 16) / 16) ** r[:, 0]
        aspect = (2 ** (2 * r[:, 1] - 1)).sqrt()  # sqrt(height / width)
        cx, cy, half_w, half_h = r[:, 2] * w, r[:, 3] * h, scale / aspect / 2, scale * aspect / 2
        boxes = torch.stack([(cx - half_w).clamp(0, w), (cy - half_h).clamp(0, h),
                             (cx + half_w).clamp(0, w), (cy + half_h).clamp(0, h)], 1)
        proposals.append(InstanceData(bboxes=boxes.to(device), scores=torch.linspace(
            1, 0, num, device=device), labels=torch.zeros(num, dtype=torch.long, device=device)))
    return proposals


def inference_forward(model: nn.Module, batch: Dict[str, Any]) -> List[torch.Tensor]:
    """The forward a deployed model runs: the host's own ``mode='tensor'``.

    Unlike :func:`tensor_forward` (the pruner's graph) it leaves out auxiliary heads
    and training-only branches. A two-stage detector's RPN predicts (decoding and NMS
    included), then its RoI head gets :func:`inference_proposals`, as many as the RPN's
    ``test_cfg.max_per_img`` (1000 in mmdet's R-CNN configs), so latency and FLOPs
    count a full RoI head, the same for every model compared. This is the forward
    the benchmarks and ``tools/test.py`` time.
    """
    patch = _Patches()
    rpn_head = _two_stage_rpn(model)
    if rpn_head is not None:
        host_predict = rpn_head.predict
        cfg = getattr(rpn_head, 'test_cfg', None) or {}
        num = cfg.get('max_per_img', INFERENCE_PROPOSALS) if hasattr(cfg, 'get') \
            else INFERENCE_PROPOSALS

        def rpn_predict(x, data_samples, rescale=False, **kwargs):
            host_predict(x, data_samples, rescale=False, **kwargs)  # its time counts
            return inference_proposals(data_samples, num, _first_tensor(x).device)

        patch(rpn_head, 'predict', rpn_predict)
    _host_quirks(model, batch, patch)
    try:
        out = model(batch['inputs'], batch['data_samples'], mode='tensor')
    finally:
        patch.restore()
    return _flatten_tensors(out)


def _registered_types() -> tuple:
    classes = tuple(tp.ops.type2class(t) for t in tp.pruner.function.PrunerBox)
    return tuple(c for c in classes if isinstance(c, type)) + tuple(CUSTOMIZED_PRUNERS)


def _pruner_of(module: nn.Module):
    custom = pruner_of(module)
    if custom is not None:
        return custom
    return tp.pruner.function.PrunerBox.get(tp.ops.module2type(module))


def _preserves_channels(module: nn.Module) -> bool:
    """True for layers whose output channels are their input channels (BN, LN, depthwise)."""
    if isinstance(module, nn.Embedding):
        return False
    pruner = _pruner_of(module)
    if pruner is None:
        return True
    fn_out = getattr(type(pruner), 'prune_out_channels', None)
    fn_in = getattr(type(pruner), 'prune_in_channels', None)
    return fn_out is fn_in


#: int attributes that hold a channel count
CHANNEL_ATTRS = ('in_channels', 'out_channels', 'channels', 'feat_channels', 'embed_dims',
                 'num_channels')


def _first_tensor(obj) -> Optional[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


@contextlib.contextmanager
def follow_input_channels(model: nn.Module) -> Iterator[Dict[str, List[str]]]:
    """Keep channel constants of weight-free modules equal to their input channels.

    Some modules without prunable layers keep a channel count as a plain
    attribute and use it in forward (mmdet's RoI extractors allocate
    ``out_channels`` feature maps). The first forward records which such
    attributes equal the channels of the module's first input tensor; every
    later forward (after pruning) sets them to the new input channels, so
    the pruned structure records them too.
    """
    layer_types = _registered_types()
    links: Dict[str, List[str]] = {}
    recorded: set = set()
    handles = []

    def hook_for(name: str, candidates: List[str]):
        def hook(module, args):
            x = _first_tensor(args)
            if x is None or x.dim() < 2:
                return
            if name not in recorded:
                recorded.add(name)
                attrs = [a for a in candidates if getattr(module, a, None) == x.shape[1]]
                if attrs:
                    links[name] = attrs
            for attr in links.get(name, ()):
                setattr(module, attr, int(x.shape[1]))
        return hook

    for name, m in model.named_modules():
        attrs = [a for a in CHANNEL_ATTRS
                 if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool)]
        if any(isinstance(d, layer_types) for d in m.modules()):
            # modules with layers: only a ``channels`` their forward reads (DyReLU's split);
            # their in/out_channels often describe a layer's output instead (GRoIE)
            attrs = [a for a in attrs if a == 'channels' and a in _forward_reads(type(m))]
        if attrs:
            handles.append(m.register_forward_pre_hook(hook_for(name, attrs)))
    try:
        yield links
    finally:
        for h in handles:
            h.remove()


_BINARY_OPS = {'add', 'add_', '__add__', '__radd__', '__iadd__', 'sub', 'sub_', '__sub__',
               '__rsub__', '__isub__', 'mul', 'mul_', '__mul__', '__rmul__', '__imul__',
               'div', 'div_', '__truediv__', '__rtruediv__', '__itruediv__'}


def _channel_dim(t: torch.Tensor) -> int:
    return 1 if t.dim() == 4 else t.dim() - 1


_PRODUCT_OPS = {'matmul', '__matmul__', '__rmatmul__', 'bmm', 'einsum', 'baddbmm'}
_CAT_OPS = {'cat', 'concat', 'concatenate'}
_DATA_OPS = {'clone', 'detach', 'reshape', 'view', 'permute', 'transpose', 'flatten',
             '__getitem__', 'repeat', 'expand', 'unsqueeze', 'squeeze', 'einsum', 'matmul', 'bmm'}
_SPLIT_OPS = {'split', 'split_with_sizes', 'chunk', 'tensor_split'}

#: tokens reshaped to maps: ``strict`` keeps the channels of every such reshape
#: (a shape taken from another tensor cannot follow a pruned width), otherwise
#: only of those that are not a plain spatial unflatten; ``relaxed`` counts the
#: reshapes let through, so that a prune failing with them can be retried strict
TOKEN_MAPS: Dict[str, Any] = dict(strict=False, relaxed=0)

#: channel concats of the last traced forward: autograd node -> its pieces in order,
#: (traced, channels when traced); see pruner._concat_sizes_guard
CONCAT_LAYOUT: Dict[Any, List[Tuple[bool, int]]] = {}


class _TraceMode(TorchFunctionMode):
    """What torch-pruning cannot see in the traced forward, made explicit.

    * An element-wise op between a traced feature and a constant tensor (no
      autograd history: sine positional encodings, fixed grids) with a full
      channel dimension fixes that feature's channels.
    * A product of two features (non-local and attention blocks written with
      ``matmul``/``bmm``) mixes channel and spatial indices in ways whose index
      mapping explodes torch-pruning's grouping. Its operands are detached, so
      the product is a constant to the graph; they become extra outputs (so the
      layers computing them stay traced) and their channels are kept.
      ``nn.MultiheadAttention`` is left to torch-pruning's own head rules.

    The autograd nodes of such features are collected in ``grad_fns`` so the
    layers producing them are kept like output layers.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.grad_fns: List[Any] = []
        self.operands: List[torch.Tensor] = []
        self._inside_mha = 0
        self._handles = []
        self._weights = {}  # id(weight) -> its conv / linear layer
        self._io: Dict[nn.Module, List[Any]] = {}  # layer -> grad_fns of its last input/output
        self.weight_readers: set = set()
        self._active: set = set()  # layers inside their own forward (ConvWS reads its weight)
        for m in model.modules():
            if isinstance(m, nn.MultiheadAttention):
                self._handles.append(m.register_forward_pre_hook(self._enter))
                self._handles.append(m.register_forward_hook(self._leave))
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) \
                    and isinstance(getattr(m, 'weight', None), torch.Tensor):
                self._weights[id(m.weight)] = m
                self._handles.append(m.register_forward_pre_hook(self._start))
                self._handles.append(m.register_forward_hook(self._record_io))

    def _enter(self, *args):
        self._inside_mha += 1

    def _leave(self, *args):
        self._inside_mha -= 1

    def _start(self, module, inputs):
        self._active.add(module)

    def _record_io(self, module, inputs, output):
        self._active.discard(module)
        self._io[module] = [t.grad_fn for t in (_first_tensor(inputs), _first_tensor(output))
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
        if name in _DATA_OPS:
            # a layer's weight used as a feature (KNet turns the FCN head's classifier
            # into its first kernels): that layer's channels are fixed on both sides
            self.weight_readers.update(
                self._weights[id(a)] for a in _flatten_tensors(list(args))
                if id(a) in self._weights and self._weights[id(a)] not in self._active)
        if name in _PRODUCT_OPS and not self._inside_mha:
            feats = [a for a in _flatten_tensors(list(args)) if a.grad_fn is not None]
            if len(feats) >= 2:
                self.grad_fns += [f.grad_fn for f in feats]
                self.operands += feats
                args = _detach_all(args)
            elif feats and any(a.grad_fn is None and a.dim() >= 2
                               for a in _flatten_tensors(list(args))):
                # a feature times a constant matrix (EMANet's bases buffer) contracts its
                # channels in a way torch-pruning cannot map: they stay
                self.grad_fns.append(feats[0].grad_fn)
                self.operands.append(feats[0])
        if name in _BINARY_OPS and len(args) >= 2:
            args = self._cut_broadcast(args)
        out = func(*args, **kwargs)
        if name in _SPLIT_OPS and args and isinstance(args[0], torch.Tensor) \
                and args[0].dim() == 4 and args[0].grad_fn is not None \
                and kwargs.get('dim', args[2] if len(args) > 2 else 0) in (1, -3) \
                and isinstance(out, (tuple, list)) and len(out) > 1:
            # channel chunks (Res2Net's hierarchical convs): torch-pruning 1.6.1 maps their
            # index ranges out of bounds once a chunk meets a concat or another chunk's
            # branch, so the split feature keeps its channels (the branches still prune)
            self.grad_fns.append(args[0].grad_fn)
        if name == '__getitem__' and len(args) == 2 and isinstance(args[0], torch.Tensor) \
                and args[0].grad_fn is not None and _slices_channels(args[0], args[1]):
            # a channel range of a feature (dynamic convs cut one Linear's output into
            # weights: KNet, Sparse R-CNN): torch-pruning 1.6.1 maps a negative or
            # offset range out of bounds, so the feature keeps its channels
            self.grad_fns.append(args[0].grad_fn)
        if name in _CAT_OPS and isinstance(out, torch.Tensor) and out.grad_fn is not None:
            _record_concat(out, args, kwargs)
        if name in ('reshape', 'view') and isinstance(out, torch.Tensor) and args \
                and isinstance(args[0], torch.Tensor) and args[0].grad_fn is not None \
                and args[0].dim() == 3 and out.dim() == 4:
            if _unflattens_space(args[0], out) and not TOKEN_MAPS['strict']:
                # channel-first tokens to maps of the same width (mmcv's nlc_to_nchw, which
                # takes the width from the tokens): the channels map one to one
                TOKEN_MAPS['relaxed'] += 1
            else:
                # tokens back to maps with a shape taken from elsewhere (DPT's reassemble
                # blocks reshape to the backbone's width): the channels stay
                self.grad_fns.append(args[0].grad_fn)
        if name in _BINARY_OPS and len(args) >= 2 and isinstance(out, torch.Tensor) \
                and out.grad_fn is not None:
            a, b = args[0], args[1]
            for t, c in ((a, b), (b, a)):
                if isinstance(t, torch.Tensor) and isinstance(c, torch.Tensor) \
                        and t.requires_grad and not c.requires_grad and c.dim() == t.dim() \
                        and t.dim() >= 2 and c.shape[_channel_dim(t)] == t.shape[_channel_dim(t)] > 1:
                    self.grad_fns.append(out.grad_fn)
        return out


    def _cut_broadcast(self, args):
        """A one-channel feature broadcast over a wide one (PIDNet's boundary
        attention, BiSeNetV2's gates) is not a channel coupling: it is cut from
        the graph and traced as an extra output."""
        a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) \
                or a.grad_fn is None or b.grad_fn is None or a.dim() != b.dim() or a.dim() < 3:
            return args
        ca, cb = a.shape[_channel_dim(a)], b.shape[_channel_dim(b)]
        if ca == cb or 1 not in (ca, cb):
            return args
        narrow = 0 if ca == 1 else 1
        self.grad_fns.append(args[narrow].grad_fn)
        self.operands.append(args[narrow])
        args = list(args)
        args[narrow] = args[narrow].detach()
        return tuple(args)


def _unflattens_space(tokens: torch.Tensor, out: torch.Tensor) -> bool:
    """Whether ``out`` is channel-first ``tokens`` (B, C, H*W) with only the
    spatial dimension split (as mmcv's ``nlc_to_nchw`` does)."""
    return tuple(out.shape[:2]) == tuple(tokens.shape[:2]) \
        and out.shape[2] * out.shape[3] == tokens.shape[2]


def _slices_channels(t: torch.Tensor, index) -> bool:
    """Whether ``t[index]`` takes part of the channel dimension with a slice."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is None for i in index) or t.dim() < 2:
        return False
    if any(i is Ellipsis for i in index):
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (t.dim() - len(index) + 1) + index[k + 1:]
    dim = _channel_dim(t)
    if dim >= len(index) or not isinstance(index[dim], slice):
        return False
    start, stop, step = index[dim].indices(t.shape[dim])
    return (start, stop, step) != (0, t.shape[dim], 1)


def _record_concat(out: torch.Tensor, args, kwargs) -> None:
    tensors = args[0] if args else kwargs.get('tensors', ())
    dim = kwargs.get('dim', args[1] if len(args) > 1 else 0)
    if out.dim() != 4 or not isinstance(dim, int) or dim % 4 != 1:
        return
    CONCAT_LAYOUT[out.grad_fn] = [(t.grad_fn is not None, int(t.shape[1]))
                                      for t in tensors]


def _detach_all(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach_all(v) for v in obj)
    return obj


def _reachable(roots: List[Any]) -> set:
    seen, stack = set(), list(roots)
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(nxt for nxt, _ in getattr(fn, 'next_functions', ()))
    return seen


def _inputs_in_predict(model: nn.Module, batch: Dict[str, Any], wanted: set,
                       grad_fn_to_module: Dict[Any, nn.Module]) -> List[Any]:
    """Autograd nodes of the inputs of ``wanted`` layers in one ``mode='predict'`` run."""
    inputs: List[Any] = []

    def grab(module, args):
        inputs.extend(t.grad_fn for t in args[:1]
                      if isinstance(t, torch.Tensor) and t.grad_fn is not None)

    def record(module, args, output):
        if isinstance(output, tuple):
            output = output[0]
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            grad_fn_to_module[output.grad_fn] = module

    layer_types = _registered_types()
    handles = [m.register_forward_pre_hook(grab) for m in wanted]
    before = dict(grad_fn_to_module)
    handles += [m.register_forward_hook(record) for m in model.modules()
                if isinstance(m, layer_types) and m not in wanted]
    try:
        model(batch['inputs'], batch['data_samples'], mode='predict')
    except Exception as e:  # noqa: BLE001 - only a hint; the untraced layers stay listed
        print_log(f'[mmprune] predict failed while looking for untraced layers: {e}',
                  logger='current', level=logging.WARNING)
        grad_fn_to_module.clear()
        grad_fn_to_module.update(before)
        return []
    finally:
        for h in handles:
            h.remove()
    return inputs


def find_output_layers(model: nn.Module, batch: Dict[str, Any],
                       forward: Callable = tensor_forward) -> Tuple[List[str], List[torch.Tensor]]:
    """Names of the layers whose output channels are model outputs.

    Runs ``forward`` once with hooks that map autograd nodes to layers, then
    walks back from every output tensor: through channel-preserving ops and
    layers (activations, reshapes, norms, depthwise convs) until it reaches a
    channel-mixing layer (conv, linear, embedding), which is recorded.
    """
    grad_fn_to_module: Dict[Any, nn.Module] = {}
    layer_types = _registered_types()
    ran: Dict[nn.Module, Tuple[Any, List[Any]]] = {}  # module -> (output node, input nodes)

    def record(module, inputs, outputs):
        if isinstance(outputs, tuple):
            outputs = outputs[0]
        out_fn = outputs.grad_fn if isinstance(outputs, torch.Tensor) else None
        if out_fn is not None:
            grad_fn_to_module[out_fn] = module
        ran[module] = (out_fn, [t.grad_fn for t in inputs[:1]
                                if isinstance(t, torch.Tensor) and t.grad_fn is not None])

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, layer_types)]
    kept: List[Any] = []
    try:
        outputs = forward(model, batch, kept)
    finally:
        for h in handles:
            h.remove()
    names = {m: n for n, m in model.named_modules()}
    named = {n: m for m, n in names.items()}
    traced = set(grad_fn_to_module.values())
    offsets = {id(m.conv_offset) for m in model.modules()
               if pruner_of(m) is not None and hasattr(m, 'conv_offset')}
    untraced = [n for n, m in model.named_modules()
                if isinstance(m, layer_types) and m not in traced and id(m) not in offsets
                and any(True for _ in m.parameters(recurse=False))]
    if untraced:
        # layers only the predict path runs (HTC's semantic head): the layers feeding
        # them keep their channels, found from one predict run
        before = len(kept)
        kept += _inputs_in_predict(model, batch, {named[n] for n in untraced},
                                   grad_fn_to_module)
        if len(kept) > before:
            untraced = [n for n in untraced if named[n] not in grad_fn_to_module.values()]
    if untraced:
        print_log(f'[mmprune] {len(untraced)} layer(s) are not reached by the traced forward '
                  f'and are left as they are: {untraced[:8]}', logger='current',
                  level=logging.WARNING)
    found: Dict[str, None] = {}
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None] + kept
    # layers that ran but whose output reaches no output (it feeds a no-grad region, like
    # EMANet's bases update) are used where the graph cannot see: they keep their
    # channels, and so do the layers feeding them
    reachable = _reachable(stack)
    for out_fn, in_fns in ran.values():
        if out_fn not in reachable:
            stack += ([out_fn] if out_fn is not None else []) + in_fns
    seen = set()
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        module = grad_fn_to_module.get(fn)
        if module is not None:
            found[names[module]] = None
            if not _preserves_channels(module):
                continue
        for nxt, _ in getattr(fn, 'next_functions', ()):
            if nxt is not None and 'AccumulateGrad' not in type(nxt).__name__:
                stack.append(nxt)
    return list(found), outputs
