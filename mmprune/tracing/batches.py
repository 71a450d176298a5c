"""Example batches: what a host model is traced, counted and timed with.

A batch is made from random images and ground truth (boxes, masks, semantic maps)
at the size the config's test pipeline resizes to, and passed through the model's own
``data_preprocessor``, so one batch serves ``mode='tensor'``, ``'predict'`` and
``'loss'``. The fixed proposals here stand in for an RPN's: while tracing (few, small:
a small graph) and while timing (as many as the RPN keeps: a full RoI head).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn


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
        for p, proposals in zip(packed, fixed_proposals([p['data_samples'] for p in packed])):
            p['data_samples'].proposals = proposals
    data = dict(inputs=[p['inputs'] for p in packed],
                data_samples=[p['data_samples'] for p in packed])
    with torch.no_grad():
        out = model.data_preprocessor(data, training)
    for sample in out['data_samples']:  # mmseg sets it only when it pads training crops
        if 'batch_input_shape' not in sample.metainfo:
            sample.set_metainfo(dict(batch_input_shape=tuple(out['inputs'].shape[-2:])))
    return out



def fixed_proposals(data_samples, num: int = 4, size: float = 32.0):
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


