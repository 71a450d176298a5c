"""Pruned config + checkpoint: written, reloaded by the host APIs, checked on mismatch."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import mmprune
from mmprune.tracing import make_batch
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
    torch.save(dict(state_dict=model.state_dict()), str(tmp_path / 'dense.pth'))
    result = mmprune.prune(model, pruning_ratio=0.5, cfg=cfg, input_shape=SHAPE)
    cfg_path, ckpt_path = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path))
    reloaded = init_model(cfg_path, ckpt_path, device='cpu')
    batch = make_batch(model, cfg, SHAPE, seed=2)
    a, b = tensor_outputs(model, batch), tensor_outputs(reloaded, batch)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert reloaded.dataset_meta['classes'][0] == 'road'
    with pytest.raises(ValueError, match=r'dense\.pth does not fit the pruned EncoderDecoder'):
        init_model(cfg_path, str(tmp_path / 'dense.pth'), device='cpu')


def test_host_loaders_refuse_a_checkpoint_that_does_not_fit(pruned_retina):
    """init_detector, mmengine's load_checkpoint (a Runner's load_from) and torch's
    load_state_dict all refuse it, before loading anything, naming the file and the keys."""
    from mmdet.apis import init_detector
    from mmengine.runner import load_checkpoint
    _, _, _, cfg_path, ckpt_path, dense_ckpt = pruned_retina
    with pytest.raises(ValueError, match=r'checkpoint .*dense\.pth does not fit the pruned '
                                         r'RetinaNet: \d+ pruned tensor.*backbone\.conv1\.weight'
                                         r'.*dense config'):
        init_detector(cfg_path, dense_ckpt, device='cpu')
    model = init_detector(cfg_path, ckpt_path, device='cpu')
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match='nothing was loaded'):
        load_checkpoint(model, dense_ckpt, map_location='cpu')
    other = dict(before, **{'neck.fpn_convs.0.conv.weight':
                            before['neck.fpn_convs.0.conv.weight'][:1]})
    with pytest.raises(ValueError, match=r'the state dict does not fit.*fpn_convs\.0\.conv'
                                         r'.*saved with this pruned config'):
        model.load_state_dict(other, strict=False)
    assert state_equal(before, model.state_dict())


def test_wrapper_pruned_at_build_refuses_the_dense_checkpoint(pruned_retina, tmp_path):
    _, _, _, _, _, dense_ckpt = pruned_retina
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(tiny('retinanet_r18_tiny'))
    cfg.model = dict(type='mmprune.PrunedModel', architecture=dict(cfg.model),
                     checkpoint=dense_ckpt, pruning=dict(pruning_ratio=0.5, input_shape=SHAPE))
    model, _ = mmprune.build_model(cfg)
    with pytest.raises(ValueError, match='does not fit the pruned RetinaNet'):
        load_checkpoint(model, dense_ckpt, map_location='cpu')


def test_pruning_a_pruned_config_saves_a_pair_on_the_dense_parent(pruned_retina, tmp_path):
    """The second structure is composed with the first: the written pair reloads through
    mmprune's strict loader and init_detector, with the twice-pruned outputs."""
    from mmdet.apis import init_detector
    _, _, _, cfg_path, ckpt_path, _ = pruned_retina
    model, cfg = mmprune.build_model(cfg_path, ckpt_path)
    result = mmprune.prune(model, pruning_ratio=0.3, cfg=cfg, input_shape=SHAPE)
    new_cfg, new_ckpt = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path),
                                            name='again')
    dense_text = open(tmp_path / 'again_dense.py').read()
    assert 'PrunedModel' not in dense_text and 'structure' not in dense_text
    batch = make_batch(model, cfg, SHAPE, seed=3)
    for reloaded in (mmprune.build_model(new_cfg, new_ckpt)[0],
                     init_detector(new_cfg, new_ckpt, device='cpu')):
        a, b = tensor_outputs(model, batch), tensor_outputs(reloaded, batch)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # the command line does the same from the pruned config
    from mmprune.cli.prune import main
    summary = main([new_cfg, new_ckpt, '--ratio', '0.2', '--out-dir', str(tmp_path / 'cli'),
                    '--input-shape', *map(str, SHAPE)])
    mmprune.build_model(summary['pruned_config'], summary['pruned_checkpoint'])


def test_a_config_that_prunes_while_building_is_refused_before_pruning(tmp_path):
    cfg = Config.fromfile(tiny('retinanet_r18_tiny'))
    cfg.model = dict(type='mmprune.PrunedModel', architecture=dict(cfg.model),
                     pruning=dict(pruning_ratio=0.5, input_shape=SHAPE))
    path = tmp_path / 'wrapped.py'
    cfg.dump(str(path))
    from mmprune.cli.prune import main
    with pytest.raises(ValueError, match='prunes while it builds.*prune its dense config'):
        main([str(path), '--out-dir', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name', ["it's", 'a"b', 'x y', 'ünï'])
def test_names_are_escaped_in_the_pruned_config(pruned_retina, tmp_path, name):
    model, cfg, result, _, _, _ = pruned_retina
    cfg_path, ckpt_path = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path),
                                              name=name)
    assert os.path.basename(cfg_path) == f'{name}_pruned.py'
    reloaded, _ = mmprune.build_model(cfg_path, ckpt_path)
    assert state_equal(model.state_dict(), reloaded.state_dict())


@pytest.mark.parametrize('name', ['{{fileDirname}}', 'a}}', 'sub/x', 'a\nb'])
def test_names_that_cannot_name_a_config_are_refused(pruned_retina, tmp_path, name):
    model, cfg, result, _, _, _ = pruned_retina
    with pytest.raises(ValueError, match='cannot name a config file'):
        mmprune.save_pruned(model, result.structure, cfg, str(tmp_path), name=name)
    assert os.listdir(tmp_path) == []


def _prune_cli(out, *extra):
    from mmprune.cli.prune import main
    return main([tiny('retinanet_r18_tiny'), '--ratio', '0.5', '--out-dir', str(out),
                 '--name', 'r', '--input-shape', *map(str, SHAPE), *extra])


def test_output_set_is_written_checkpoint_first_and_refused_up_front(tmp_path, monkeypatch):
    import mmprune.apis as apis
    out = tmp_path / 'out'
    _prune_cli(out)
    files = {f: (out / f).read_bytes() for f in os.listdir(out)}
    assert sorted(files) == ['r_dense.py', 'r_prune_summary.json', 'r_pruned.pth',
                             'r_pruned.py']
    calls = []
    monkeypatch.setattr(mmprune, 'prune', lambda *a, **k: calls.append(1))
    for left in ('r_pruned.py', 'r_prune_summary.json'):  # each blocks a re-run up front
        for f in files:
            if f != left:
                os.remove(out / f)
        with pytest.raises(FileExistsError, match=left):
            _prune_cli(out)
        assert not calls and os.listdir(out) == [left]
        for f, data in files.items():
            (out / f).write_bytes(data)
    monkeypatch.undo()

    # killed after the checkpoint, before the configs (--overwrite, another ratio): the old
    # config is left beside the new checkpoint, and every loader refuses the pair
    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(apis, 'write_pruned_config', killed)
    with pytest.raises(KeyboardInterrupt):
        _prune_cli(out, '--overwrite', '--ratio', '0.25')
    monkeypatch.undo()
    from mmdet.apis import init_detector
    with pytest.raises(ValueError, match='does not fit the pruned'):
        init_detector(str(out / 'r_pruned.py'), str(out / 'r_pruned.pth'), device='cpu')
    # a first save interrupted before its configs (checkpoint, maybe the dense config, no
    # pruned config or summary) does not block the re-run; stale temporaries go
    os.remove(out / 'r_pruned.py')
    os.remove(out / 'r_prune_summary.json')
    (out / '.tmp-abc123-r_dense.py').write_text('')
    _prune_cli(out)
    assert not [f for f in os.listdir(out) if f.startswith('.tmp-')]
    mmprune.build_model(str(out / 'r_pruned.py'), str(out / 'r_pruned.pth'))

