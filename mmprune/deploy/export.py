"""A host model config + checkpoint to an end-to-end ONNX model, with mmdeploy.

End to end: a detector's graph holds its post-processing (box decoding and
NMS), so ONNX Runtime's outputs are the detections, not raw head tensors; a
segmentor's gives the logits at the export size, which
:mod:`mmprune.deploy.seg_model` resizes and argmaxes as mmseg does. mmdeploy
builds the model through the host's registry from the config, so a pruned
config (``mmprune.PrunedModel``) exports as the host model it builds, with
every mmdeploy rewrite for its class.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.config import Config

from ..apis import dense_model_cfg, is_pruned_config, load_config
from ..configs import config_path
from ..tracing import config_input_shape
from .compat import export_patches, require_mmdeploy

#: the project's deploy settings, by task (``configs/deploy/``)
DEPLOY_CONFIGS = dict(
    detection='mmprune::deploy/detection_onnxruntime_dynamic.py',
    instance_segmentation='mmprune::deploy/instance-seg_onnxruntime_dynamic.py',
    segmentation='mmprune::deploy/segmentation_onnxruntime_static.py')


def task_of_config(model_cfg: Config) -> str:
    """``'detection'``, ``'instance_segmentation'`` or ``'segmentation'``, from the config."""
    scope = model_cfg.get('default_scope', 'mmdet')
    if scope == 'mmseg':
        return 'segmentation'
    if scope != 'mmdet':
        raise ValueError(f'mmprune deploy exports mmdet and mmseg models; this config\'s '
                         f'default_scope is {scope!r}')
    fields = dense_model_cfg(model_cfg) if is_pruned_config(model_cfg) else model_cfg.model
    roi_head = fields.get('roi_head') or {}
    if fields.get('mask_head') or (isinstance(roi_head, dict) and roi_head.get('mask_head')):
        return 'instance_segmentation'
    return 'detection'


def deploy_config(model_cfg: Config, shape: Optional[Sequence[int]] = None,
                  deploy_cfg: Union[str, Config, None] = None) -> Config:
    """The deploy settings for ``model_cfg``: ``deploy_cfg`` when given, else the
    project's for its task. A static segmentation export takes ``shape`` (h, w),
    by default the config's test resize."""
    if deploy_cfg is None:
        deploy_cfg = config_path(DEPLOY_CONFIGS[task_of_config(model_cfg)])
    cfg = deploy_cfg if isinstance(deploy_cfg, Config) else Config.fromfile(deploy_cfg)
    cfg = copy.deepcopy(cfg)
    if cfg.onnx_config.get('input_shape') is not None or shape is not None:
        h, w = shape or config_input_shape(model_cfg) or cfg.onnx_config.input_shape[::-1]
        cfg.onnx_config.input_shape = [int(w), int(h)]  # mmdeploy's order: [W, H]
    return cfg


def test_images(model_cfg: Config, count: int,
                shape: Optional[Sequence[int]] = None) -> list:
    """Paths of the first ``count`` images of the config's test set, or synthetic
    images (arrays of ``shape`` (h, w), by default the config's test size) when its
    files are not there."""
    from mmdeploy.apis import build_task_processor
    try:
        tp = build_task_processor(model_cfg, deploy_config(model_cfg), 'cpu')
        dataset = tp.build_dataset(copy.deepcopy(model_cfg.test_dataloader.dataset))
        paths = [dataset.get_data_info(i)['img_path'] for i in range(min(count, len(dataset)))]
        if paths and all(osp.isfile(p) for p in paths):
            return paths
    except Exception:  # noqa: BLE001 - no test set on disk: synthetic images below
        pass
    h, w = shape or config_input_shape(model_cfg) or (512, 512)
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(count)]


def export_end2end(config: Union[str, Config], checkpoint: str, work_dir: str,
                   deploy_cfg: Optional[Config] = None, image: Any = None,
                   shape: Optional[Sequence[int]] = None) -> Tuple[str, Config, Config]:
    """Export ``config`` + ``checkpoint`` to ``<work_dir>/end2end.onnx``.

    Returns the ONNX path, the model config and the deploy config used. A model
    that mmdeploy cannot export gives one error naming it and the cause.
    """
    require_mmdeploy()
    from mmdeploy.apis import torch2onnx
    model_cfg = load_config(config)
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    deploy_cfg = deploy_config(model_cfg, shape, deploy_cfg)
    if image is None:
        image = test_images(model_cfg, 1)[0]
    os.makedirs(work_dir, exist_ok=True)
    onnx_file = osp.join(work_dir, deploy_cfg.onnx_config.save_file)
    try:
        with export_patches():
            torch2onnx(image, work_dir, deploy_cfg.onnx_config.save_file, deploy_cfg,
                       model_cfg, checkpoint, device='cpu')
    except Exception as e:
        model_type = model_cfg.model.get('architecture', model_cfg.model.get('type'))
        what = model_type if isinstance(model_type, str) else 'the model'
        cause = str(e).strip().splitlines()[0] if str(e).strip() else ''
        raise RuntimeError(
            f'mmdeploy could not export {what} of {model_cfg.filename or "the config"} '
            f'({type(e).__name__}: {cause}); see mmdeploy\'s supported models, or export the '
            f'raw head tensors with mmprune export') from e
    return onnx_file, model_cfg, deploy_cfg
