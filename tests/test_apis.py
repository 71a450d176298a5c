"""Pruned config + checkpoint: written, reloaded by the host APIs, checked on mismatch."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import mmprune
from mmprune.graph import make_batch
from mmprune.structure import apply_structure, snapshot

from conftest import ROOT, state_equal, tensor_outputs, tiny

SHAPE = (96, 128)


@pytest.fixture(scope='module')
def pruned_retina(tmp_path_factory):
    out = tmp_path_factory.mktemp('retina')
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    dense_sd = copy.deepcopy(model.state_dict())
    result = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    cfg_path, ckpt_path = mmprune.save_pruned(model, result.structure, cfg, str(out),
                                              name='retina')
    torch.save(dict(state_dict=dense_sd), str(out / 'dense.pth'))
    return model, cfg, result, cfg_path, ckpt_path, str(out / 'dense.pth')


def test_files_and_keys(pruned_retina):
    model, cfg, result, cfg_path, ckpt_path, _ = pruned_retina
    text = open(cfg_path).read()
    assert "type='mmprune.PrunedModel'" in text and "_base_ = './retina_dense.py'" in text
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt['meta']['mmprune']['structure'] == result.structure
    assert ckpt['meta']['dataset_meta']['classes']
    dense, _ = mmprune.build_model(tiny('retinanet_r18_tiny'))
    assert set(ckpt['state_dict']) == set(dense.state_dict())


def test_reload_through_init_detector_gives_identical_outputs(pruned_retina):
    from mmdet.apis import init_detector
    model, cfg, _, cfg_path, ckpt_path, _ = pruned_retina
    reloaded = init_detector(cfg_path, ckpt_path, device='cpu')
    assert type(reloaded) is type(model)
    assert state_equal(model.state_dict(), reloaded.state_dict())
    batch = make_batch(model, cfg, SHAPE, seed=5)
    a, b = tensor_outputs(model, batch), tensor_outputs(reloaded, batch)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_reload_through_runner_test_config(pruned_retina):
    _, _, result, cfg_path, ckpt_path, _ = pruned_retina
    cfg = Config.fromfile(cfg_path)
    model, _ = mmprune.build_model(cfg, ckpt_path)
    assert snapshot(model)['shapes']['bbox_head.retina_cls.weight'][1] == \
        result.structure['shapes']['bbox_head.retina_cls.weight'][1]


def test_dense_checkpoint_to_pruned_config_is_refused(pruned_retina):
    _, _, _, cfg_path, _, dense_ckpt = pruned_retina
    with pytest.raises(ValueError, match='does not match.*dense checkpoint given to a pruned'):
        mmprune.build_model(cfg_path, dense_ckpt)


def test_pruned_checkpoint_to_dense_config_is_refused(pruned_retina):
    _, _, _, _, ckpt_path, _ = pruned_retina
    with pytest.raises(ValueError, match='pruned checkpoint but the config builds the dense'):
        mmprune.build_model(tiny('retinanet_r18_tiny'), ckpt_path)


def test_checkpoint_of_another_model_is_refused(pruned_retina):
    _, _, _, _, _, dense_ckpt = pruned_retina
    with pytest.raises(ValueError, match='does not match EncoderDecoder'):
        mmprune.build_model(tiny('pspnet_r18_tiny'), dense_ckpt)


def test_structure_of_another_model_is_refused_and_model_unchanged(pruned_retina):
    _, _, result, _, _, _ = pruned_retina
    other, _ = mmprune.build_model(tiny('pspnet_r18_tiny'))
    sd, shape = copy.deepcopy(other.state_dict()), snapshot(other)
    with pytest.raises(KeyError, match='does not match EncoderDecoder'):
        apply_structure(other, result.structure)
    assert snapshot(other) == shape and state_equal(sd, other.state_dict())


def test_existing_files_are_not_overwritten(pruned_retina):
    model, cfg, result, cfg_path, _, _ = pruned_retina
    before = open(cfg_path).read()
    with pytest.raises(FileExistsError, match='overwrite'):
        mmprune.save_pruned(model, result.structure, cfg, os.path.dirname(cfg_path),
                            name='retina')
    assert open(cfg_path).read() == before


def test_registry_resolves_without_importing_mmprune(pruned_retina):
    """A fresh interpreter builds the pruned config through mmdet's registry alone."""
    _, _, _, cfg_path, ckpt_path, _ = pruned_retina
    code = (
        'import sys; from mmdet.apis import init_detector\n'
        f'm = init_detector({cfg_path!r}, {ckpt_path!r}, device="cpu")\n'
        'assert "mmprune" in sys.modules\n'
        'print(type(m).__name__)\n')
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         env=env, cwd='/', timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith('RetinaNet')


def test_segmentor_reload_through_init_model(tmp_path):
    from mmseg.apis import init_model
    model, cfg = mmprune.build_model(tiny('pspnet_r18_tiny'))
    result = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    cfg_path, ckpt_path = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path))
    reloaded = init_model(cfg_path, ckpt_path, device='cpu')
    batch = make_batch(model, cfg, SHAPE, seed=2)
    a, b = tensor_outputs(model, batch), tensor_outputs(reloaded, batch)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert reloaded.dataset_meta['classes'][0] == 'road'
