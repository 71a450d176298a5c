"""Every config under configs/ loads and builds; the real-data configs read ../shared/data."""
import glob
import os

import pytest
import torch

from mmprune.apis import build_model, load_config

from conftest import ROOT

ALL = sorted(os.path.relpath(p, ROOT)
             for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True))
#: mmdeploy's deploy settings (configs/deploy/) are not model configs
DEPLOY = [c for c in ALL if c.startswith('configs/deploy/')]
CONFIGS = [c for c in ALL if '_base_' not in c and c not in DEPLOY]
SHARED = os.path.join(ROOT, '..', 'shared', 'data')
REAL = {  # config -> (shared folder, val images, classes)
    'configs/bccd/retinanet_mbv2_fpn_bccd.py': ('bccd', 87, ('RBC', 'WBC', 'Platelets')),
    'configs/bccd/fcos_mbv2_fpn_bccd.py': ('bccd', 87, ('RBC', 'WBC', 'Platelets')),
    'configs/camvid/fpn_mbv2_camvid.py': ('camvid', 101, 11),
    'configs/camvid/deeplabv3plus_mbv2_camvid.py': ('camvid', 101, 11),
}


@pytest.mark.parametrize('config', CONFIGS)
def test_config_loads_and_builds(config):
    cfg = load_config(os.path.join(ROOT, config))
    model, _ = build_model(cfg)
    wanted = cfg.model.type.split('.')[-1]
    assert type(model).__name__ == wanted or (wanted == 'PrunedModel')
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize('config', DEPLOY)
def test_deploy_config_loads(config):
    cfg = load_config(os.path.join(ROOT, config))
    assert cfg.backend_config.type == 'onnxruntime'
    assert cfg.codebase_config.type in ('mmdet', 'mmseg')
    assert cfg.onnx_config.save_file == 'end2end.onnx' and cfg.onnx_config.output_names


def test_real_data_configs_listed():
    assert set(REAL) <= set(CONFIGS)


@pytest.mark.parametrize('config', sorted(REAL))
def test_real_data_config_reads_shared_data_and_prunes(config):
    folder, n_val, classes = REAL[config]
    root = os.path.join(SHARED, folder)
    if not os.path.isdir(root):
        pytest.skip(f'{root} absent (real data for {config}; see ../shared/data/README.md)')
    cfg = load_config(os.path.join(ROOT, config))
    for split in ('train_dataloader', 'val_dataloader'):
        cfg[split].dataset.data_root = root + '/'
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    from mmengine.registry import DATASETS
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(val) == n_val
    names = val.metainfo['classes']
    assert (len(names) == classes) if isinstance(classes, int) else tuple(names) == classes
    sample = val[0]
    assert sample['inputs'].shape[0] == 3
    import mmprune
    model, _ = build_model(cfg)
    result = mmprune.prune(model, 0.3, cfg=cfg, importance='l2')
    assert result.flops[1] < result.flops[0]
    batch = model.data_preprocessor(dict(inputs=[sample['inputs']],
                                         data_samples=[sample['data_samples']]), False)
    model.eval()
    with torch.no_grad():
        out = model(**batch, mode='predict')
    assert len(out) == 1


def test_metafile_names_existing_configs():
    import yaml
    meta = yaml.safe_load(open(os.path.join(ROOT, 'configs', 'metafile.yml')))
    assert meta['Models']
    for m in meta['Models']:
        assert m['Config'] in CONFIGS, m['Name']
        assert m['Results'][0]['Metrics']
    index = yaml.safe_load(open(os.path.join(ROOT, 'model-index.yml')))
    assert index['Import'] == ['configs/metafile.yml']
