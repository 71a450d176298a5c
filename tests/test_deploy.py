"""mmprune deploy: end-to-end ONNX through mmdeploy, checked against PyTorch in ONNX Runtime."""
import os
import sys

import numpy as np
import pytest
import torch

import mmprune

from conftest import tiny

pytest.importorskip('mmdeploy', reason='mmdeploy is optional: bash tools/setup.sh --deploy')
ort = pytest.importorskip('onnxruntime')

from mmprune.deploy import deploy, export_end2end, require_mmdeploy  # noqa: E402
from mmprune.deploy.compat import export_patches  # noqa: E402

SHAPE = (96, 128)


def _spread(config, tmp_path, head='bbox_head.retina_cls'):
    """A random detector whose classifier is redrawn so that its scores spread over (0, 1)
    and it detects (a random init scores every box about 0.01, under the threshold)."""
    model, cfg = mmprune.build_model(config)
    layer = model.get_submodule(head)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        layer.bias.fill_(-2.5)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'spread.pth')
    return config, str(tmp_path / 'spread.pth')


def _pruned(name, tmp_path, spread_head=None, **options):
    """A pruned tiny model saved by mmprune; with ``spread_head``, that layer's weights
    redrawn so that a random detector's scores spread over (0, 1) and it detects."""
    model, cfg = mmprune.build_model(tiny(name))
    result = mmprune.prune(model, **{'pruning_ratio': 0.5, **options}, cfg=cfg,
                           input_shape=SHAPE)
    if spread_head:
        layer = model.get_submodule(spread_head)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
            layer.bias.fill_(-2.5)
    return mmprune.save_pruned(model, result.structure, cfg, str(tmp_path), name='m')


@pytest.mark.parametrize('options', [{}, dict(remove_blocks=2)], ids=['width', 'depth'])
def test_pruned_detector_exports_end_to_end_and_matches_pytorch(tmp_path, options):
    cfg_path, ckpt = _pruned('retinanet_r18_tiny', tmp_path, 'bbox_head.retina_cls', **options)
    summary = deploy(cfg_path, ckpt, str(tmp_path / 'deploy'), num_images=2, evaluate=False,
                     latency_runs=1)
    agree = summary['agreement']
    assert agree['torch'] > 10 and agree['matched'] == agree['torch'] == agree['ort']
    assert agree['max_box_diff'] < 1e-3 and agree['max_score_diff'] < 1e-4
    assert 'NonMaxSuppression' in summary['onnx_ops']  # post-processing inside the graph
    assert set(summary['latency_ms']) == {'pytorch', 'onnxruntime'}
    # a plain ONNX Runtime session runs the file: detections and labels per image
    sess = ort.InferenceSession(summary['onnx'], providers=['CPUExecutionProvider'])
    dets, labels = sess.run(None, {'input': np.random.rand(1, 3, 96, 128).astype(np.float32)})
    assert dets.shape[0] == 1 and dets.shape[2] == 5 and labels.shape == dets.shape[:2]
    assert os.path.isfile(tmp_path / 'deploy' / 'deploy_summary.json')


def test_two_stage_detector_exports_with_roi_align(tmp_path):
    """Faster R-CNN needs the _cast_Long patch (torch 2.9) for mmdeploy's RoIAlign."""
    model, cfg = mmprune.build_model(tiny('faster_rcnn_r18_tiny'))
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'f.pth')
    cfg.dump(str(tmp_path / 'f.py'))
    onnx_file, _, _ = export_end2end(str(tmp_path / 'f.py'), str(tmp_path / 'f.pth'),
                                     str(tmp_path / 'deploy'))
    import onnx
    ops = {n.op_type for n in onnx.load(onnx_file).graph.node}
    assert {'RoiAlign', 'NonMaxSuppression'} <= ops


def test_pruned_segmentor_exports_static_and_labels_alike(tmp_path):
    cfg_path, ckpt = _pruned('pspnet_r18_tiny', tmp_path)
    # PSPNet: H/8 and W/8 multiples of the pooling bins (1, 2, 3, 6), see configs/deploy
    summary = deploy(cfg_path, ckpt, str(tmp_path / 'deploy'), shape=(96, 144), num_images=2,
                     evaluate=False, latency_runs=0)
    assert summary['input_shape'] == [144, 96]
    agree = summary['agreement']
    assert agree['pixels'] > 0 and agree['equal'] == agree['pixels']
    assert summary['latency_ms'] == {'pytorch': None, 'onnxruntime': None}
    # an image at another size than the export's: mmseg resizes the logits, then argmaxes;
    # mmprune's backend model does the same (mmdeploy's own resizes the argmax)
    from mmdeploy.apis import build_task_processor
    from mmdeploy.utils import get_input_shape
    from mmprune.deploy.check import agreement
    from mmprune.deploy.export import deploy_config
    model_cfg = mmprune.load_config(cfg_path)
    dcfg = deploy_config(model_cfg, (96, 144))
    dcfg.codebase_config.align_corners = False
    tp = build_task_processor(model_cfg, dcfg, 'cpu')
    backend = tp.build_backend_model([summary['onnx']],
                                     data_preprocessor_updater=tp.update_data_preprocessor)
    assert type(backend).__name__ == 'HostPostprocessModel'
    image = np.random.default_rng(1).integers(0, 255, (150, 211, 3), dtype=np.uint8)
    big = agreement(tp, tp.build_pytorch_model(ckpt), backend, [image], get_input_shape(dcfg))
    assert big['pixels'] == 150 * 211 and big['equal'] == big['pixels']


def test_a_model_mmdeploy_cannot_export_is_one_named_error(tmp_path):
    from mmdet.models.dense_heads import RetinaHead
    from mmdet.registry import MODELS

    @MODELS.register_module(force=True)
    class InvertingHead(RetinaHead):
        """Uses an operator ONNX opset 11 has no counterpart for."""

        def forward(self, x):
            cls, reg = super().forward(x)
            return [c + torch.linalg.inv(c[0, :2, :2, :2]).sum() for c in cls], reg

    from mmengine.config import Config
    cfg = Config.fromfile(tiny('retinanet_r18_tiny'))
    cfg.model.bbox_head.type = 'InvertingHead'
    model, cfg = mmprune.build_model(cfg)
    torch.save(dict(state_dict=model.state_dict()), tmp_path / 'x.pth')
    cfg.dump(str(tmp_path / 'x.py'))
    with pytest.raises(RuntimeError, match=r'mmdeploy could not export RetinaNet of .*x\.py'
                                           r' \(.*linalg_inv'):
        export_end2end(str(tmp_path / 'x.py'), str(tmp_path / 'x.pth'), str(tmp_path / 'd'))


def test_export_patches_are_undone_and_mmdeploy_absence_is_explained(monkeypatch):
    import torch.onnx
    import torch.onnx.symbolic_opset9 as opset9
    before = torch.onnx.export, hasattr(opset9, '_cast_Long')
    with export_patches():
        assert hasattr(opset9, '_cast_Long')
    assert (torch.onnx.export, hasattr(opset9, '_cast_Long')) == before
    monkeypatch.setitem(sys.modules, 'mmdeploy', None)
    with pytest.raises(ImportError, match='needs mmdeploy.*--no-deps.*setup.sh --deploy'):
        require_mmdeploy()


def test_deploy_command_evaluates_both_models_on_the_test_set(tmp_path):
    """On the demo's drawn shapes (made by the dataset on first use), a random tiny
    detector whose scores spread: the host metric of PyTorch and ONNX Runtime agree."""
    from mmengine.config import Config
    cfg = Config.fromfile(mmprune.config_path('mmprune::demo/retinanet_r18_shapes.py'))
    data = f'{tmp_path}/shapes/'
    cfg.test_dataloader.dataset.data_root = data
    cfg.test_evaluator.ann_file = data + 'val.json'
    cfg.dump(str(tmp_path / 'shapes_retina.py'))
    cfg_path, ckpt = _spread(str(tmp_path / 'shapes_retina.py'), tmp_path)
    from mmprune.cli.deploy import main
    summary = main([cfg_path, ckpt, '--work-dir', str(tmp_path / 'd'), '--latency-runs', '0',
                    '--num-images', '1', '--max-images', '10'])
    metrics = summary['metrics']
    assert set(metrics) == {'pytorch', 'onnxruntime'}
    assert metrics['pytorch'] == pytest.approx(metrics['onnxruntime'], abs=1e-3)
    assert summary['task'] == 'detection' and summary['agreement']['torch'] > 0
