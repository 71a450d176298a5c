"""Check an exported model against PyTorch: outputs, the host's metric, latency.

The PyTorch model and the ONNX Runtime model are mmdeploy's (the task
processor's ``build_pytorch_model`` / ``build_backend_model``); both run the
same collated batches through ``test_step``, so they are compared on the
host's own prediction format (``DetDataSample`` / ``SegDataSample``). The
metric is the model config's ``test_evaluator`` on its test set, computed by
an mmengine Runner around each model (mmdeploy's ``DeployTestRunner``, as its
own ``tools/test.py`` does).
"""
from __future__ import annotations

import copy
import os.path as osp
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..timing import interleaved_ms

#: two detections agree when they have the same label and at least this IoU
MATCH_IOU = 0.9


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def compare_detections(torch_pred, ort_pred) -> Dict[str, Any]:
    """Greedy one-to-one matching of ONNX Runtime's detections to PyTorch's, in score
    order (same label, IoU >= :data:`MATCH_IOU`); the largest box and score differences
    of the matched pairs. Boxes are clipped to the image first: mmdeploy's graph clips
    to the padded input, mmdet to the image."""
    p, o = torch_pred.pred_instances, ort_pred.pred_instances
    pb, ps, pl = p.bboxes.numpy(), p.scores.numpy(), p.labels.numpy()
    ob, os_, ol = o.bboxes.numpy().copy(), o.scores.numpy(), o.labels.numpy()
    h, w = ort_pred.metainfo['ori_shape'][:2]
    ob[:, 0::2] = ob[:, 0::2].clip(0, w)
    ob[:, 1::2] = ob[:, 1::2].clip(0, h)
    out = dict(torch=len(ps), ort=len(os_), matched=0, max_box_diff=0.0, max_score_diff=0.0)
    if len(ps) and len(os_):
        iou, used = _iou(ob, pb), set()
        for i in np.argsort(-os_):
            candidates = [j for j in np.argsort(-iou[i])
                          if j not in used and pl[j] == ol[i] and iou[i, j] >= MATCH_IOU]
            if candidates:
                j = candidates[0]
                used.add(j)
                out['matched'] += 1
                out['max_box_diff'] = max(out['max_box_diff'], float(np.abs(ob[i] - pb[j]).max()))
                out['max_score_diff'] = max(out['max_score_diff'], float(abs(os_[i] - ps[j])))
    return out


def compare_segmentation(torch_pred, ort_pred) -> Dict[str, Any]:
    a, b = torch_pred.pred_sem_seg.data, ort_pred.pred_sem_seg.data
    if a.shape != b.shape:
        return dict(pixels=int(a.numel()), equal=0, shape=[list(a.shape), list(b.shape)])
    return dict(pixels=int(a.numel()), equal=int((a == b).sum()))


def agreement(tp, torch_model, backend_model, images: List[Any], input_shape) -> Dict[str, Any]:
    """PyTorch vs ONNX Runtime predictions on ``images``, summed over the images."""
    totals: Dict[str, Any] = {}
    for image in images:
        data, _ = tp.create_input(image, input_shape)
        with torch.no_grad():
            a = torch_model.test_step(copy.deepcopy(data))[0]
            b = backend_model.test_step(copy.deepcopy(data))[0]
        one = (compare_detections(a, b) if 'pred_instances' in a
               else compare_segmentation(a, b))
        for k, v in one.items():
            if isinstance(v, (int, float)):
                totals[k] = max(totals.get(k, 0), v) if k.startswith('max') else \
                    totals.get(k, 0) + v
    totals['images'] = len(images)
    return totals


def agreement_line(a: Dict[str, Any]) -> str:
    if 'pixels' in a:
        return (f'{a["equal"] / max(a["pixels"], 1):.4%} of {a["pixels"]} pixels labelled '
                f'alike on {a["images"]} image(s)')
    return (f'{a["matched"]} of {a["torch"]} PyTorch / {a["ort"]} ONNX Runtime detections '
            f'matched on {a["images"]} image(s) (same label, IoU >= {MATCH_IOU}); max '
            f'|box diff| {a["max_box_diff"]:.2e} px, max |score diff| {a["max_score_diff"]:.2e}')


def host_metric(tp, model, model_cfg, work_dir: str, max_images: Optional[int] = None) -> dict:
    """The config's test metric for ``model`` (PyTorch or ONNX Runtime) on its test set."""
    loader = copy.deepcopy(model_cfg.test_dataloader)
    loader['batch_size'] = 1  # the backend model runs one image at a time
    if max_images:  # mmengine datasets take the first N themselves, metainfo kept
        loader['dataset']['indices'] = max_images
    loader['dataset'] = tp.build_dataset(loader['dataset'])
    runner = tp.build_test_runner(model, work_dir, dataloader=tp.build_dataloader(loader))
    return runner.test()


def latency_ms(tp, torch_model, backend_model, image, input_shape, runs: int) -> dict:
    """Median ms of one image through ``test_step`` (preprocessing, forward and
    post-processing) for both models, interleaved (:mod:`mmprune.timing`)."""
    data, _ = tp.create_input(image, input_shape)

    def run(model):
        with torch.no_grad():
            model.test_step(copy.deepcopy(data))
    return interleaved_ms(dict(pytorch=lambda: run(torch_model),
                               onnxruntime=lambda: run(backend_model)), runs)


def onnx_ops(onnx_file: str) -> List[str]:
    import onnx
    model = onnx.load(onnx_file)
    return sorted({n.op_type for n in model.graph.node})


def file_mb(path: str) -> float:
    return round(osp.getsize(path) / 2 ** 20, 3)
