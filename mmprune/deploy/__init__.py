"""Deploy a (pruned) model with OpenMMLab's deployer, mmdeploy, and check it.

:func:`deploy` exports a host config + checkpoint to an end-to-end ONNX model
(post-processing inside the graph, :mod:`.export`), runs it in ONNX Runtime
beside PyTorch on the same images, and evaluates both with the config's test
metric (:mod:`.check`). mmdeploy is optional: :mod:`.compat` says how to install
it beside current onnx and patches, only while an export runs, what torch 2.9
changed under it.
"""
from __future__ import annotations

import json
import os.path as osp
import time
from typing import Any, Dict, Optional, Sequence, Union

from mmengine.config import Config

from ..apis import dense_model_cfg, is_pruned_config, load_config
from ..checkpoint import atomic_write
from ..evaluation import main_metric
from .check import agreement, agreement_line, file_mb, host_metric, latency_ms, onnx_ops
from .compat import INSTALL, export_patches, require_mmdeploy
from .export import deploy_config, export_end2end, task_of_config, test_images


def deploy(config: Union[str, Config], checkpoint: str, work_dir: str, *,
           deploy_cfg: Union[str, Config, None] = None, shape: Optional[Sequence[int]] = None,
           num_images: int = 5, evaluate: bool = True, max_images: Optional[int] = None,
           latency_runs: int = 10, cfg_options: Optional[dict] = None) -> Dict[str, Any]:
    """Export, then compare PyTorch and ONNX Runtime; returns (and writes) a summary.

    Args:
        config: the model config (dense or pruned; path or ``mmdet::``/``mmseg::``/
            ``mmprune::`` name).
        checkpoint: its weights.
        work_dir: where ``end2end.onnx`` and ``deploy_summary.json`` go.
        deploy_cfg: mmdeploy deploy settings; default: the project's for the task
            (``configs/deploy/``: detection and instance segmentation with dynamic
            shapes, segmentation static).
        shape: (h, w) of a static export (segmentation); default: the config's test resize.
        num_images: test images whose predictions are compared.
        evaluate: compute the config's test metric for both models.
        max_images: evaluate on the first images of the test set only.
        latency_runs: timed runs of each model (0: no timing).
        cfg_options: overrides of the model config.
    """
    require_mmdeploy()
    from mmdeploy.apis import build_task_processor
    from mmdeploy.utils import get_input_shape

    from . import seg_model  # noqa: F401 - registers mmseg's post-processing for mmdeploy
    model_cfg = load_config(config)
    if cfg_options:
        model_cfg.merge_from_dict(cfg_options)
    images = test_images(model_cfg, max(num_images, 1), shape)
    t0 = time.perf_counter()
    onnx_file, model_cfg, deploy_cfg = export_end2end(model_cfg, checkpoint, work_dir,
                                                      deploy_cfg, images[0], shape)
    export_s = time.perf_counter() - t0
    if task_of_config(model_cfg) == 'segmentation':
        host = dense_model_cfg(model_cfg) if is_pruned_config(model_cfg) else model_cfg.model
        head = host.get('decode_head') or {}
        head = head[-1] if isinstance(head, (list, tuple)) else head  # cascades: the last
        # what seg_model resizes and thresholds the logits with, as the host's head does
        deploy_cfg.codebase_config.setdefault('align_corners', head.get('align_corners', False))
        deploy_cfg.codebase_config.setdefault('threshold', head.get('threshold') or 0.3)
    tp = build_task_processor(model_cfg, deploy_cfg, 'cpu')
    torch_model = tp.build_pytorch_model(checkpoint)
    backend_model = tp.build_backend_model(
        [onnx_file], data_preprocessor_updater=tp.update_data_preprocessor)
    input_shape = get_input_shape(deploy_cfg)
    summary: Dict[str, Any] = dict(
        config=config if isinstance(config, str) else getattr(config, 'filename', None),
        checkpoint=checkpoint, task=task_of_config(model_cfg), onnx=onnx_file,
        onnx_mb=file_mb(onnx_file), onnx_ops=onnx_ops(onnx_file),
        input_shape=input_shape, export_s=round(export_s, 1),
        agreement=agreement(tp, torch_model, backend_model, images[:num_images], input_shape))
    if evaluate:
        summary['metrics'] = {
            name: host_metric(tp, model, model_cfg, osp.join(work_dir, f'test_{name}'),
                              max_images)
            for name, model in (('pytorch', torch_model), ('onnxruntime', backend_model))}
    summary['latency_ms'] = latency_ms(tp, torch_model, backend_model, images[0], input_shape,
                                       latency_runs)
    atomic_write(osp.join(work_dir, 'deploy_summary.json'),
                 lambda p: open(p, 'w').write(json.dumps(summary, indent=2, default=str)),
                 overwrite=True)
    return summary


def summary_lines(summary: Dict[str, Any]) -> list:
    """The summary as the command prints it."""
    lines = [f'ONNX: {summary["onnx"]} ({summary["onnx_mb"]} MB, exported in '
             f'{summary["export_s"]} s; ops: {", ".join(summary["onnx_ops"])})',
             f'outputs: {agreement_line(summary["agreement"])}']
    metrics = summary.get('metrics') or {}
    latency = summary.get('latency_ms') or {}
    keys = [main_metric(metrics['pytorch'])] if metrics.get('pytorch') else []
    header = f'{"":14s}' + ''.join(f'{k:>18s}' for k in keys) + f'{"ms / image":>14s}'
    lines.append(header)
    for name in ('pytorch', 'onnxruntime'):
        row = f'{name:14s}' + ''.join(
            f'{metrics.get(name, {}).get(k, float("nan")):>18.4f}' for k in keys)
        ms = latency.get(name)
        lines.append(row + (f'{ms:>14.1f}' if ms is not None else f'{"-":>14s}'))
    return lines


__all__ = ['deploy', 'export_end2end', 'deploy_config', 'export_patches', 'require_mmdeploy',
           'summary_lines', 'INSTALL']
