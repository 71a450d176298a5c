"""Safe loading: mmengine Runner checkpoints under weights_only=True, nothing more."""
import io
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


def _save_as_host(path):
    """A checkpoint as mmengine's Runner saves it when mmprune is not imported: its
    message hub pickles HistoryBuffer statistics as getattr(HistoryBuffer, 'min')."""
    code = ('import torch\nfrom mmengine.logging import MessageHub\n'
            "hub = MessageHub.get_instance('host')\nhub.update_scalar('train/loss', 1.5)\n"
            f"torch.save(dict(state_dict=dict(w=torch.ones(2)), message_hub=hub.state_dict()), "
            f"{str(path)!r})\n")
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)


def test_host_checkpoint_loads_with_weights_only(tmp_path):
    from mmprune.checkpoint import allow_mmengine_types
    allow_mmengine_types()  # what importing mmprune does
    path = tmp_path / 'host.pth'
    _save_as_host(path)
    ckpt = torch.load(path, weights_only=True)
    buf = ckpt['message_hub']['log_scalars']['train/loss']
    assert buf.current() == 1.5 and buf.statistics('mean') == 1.5
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))
    from mmprune.checkpoint import load_checkpoint_file
    assert load_checkpoint_file(str(path))['state_dict']['w'].sum() == 2


class _Getattr:
    def __init__(self, obj, name):
        self.obj, self.name = obj, name

    def __reduce__(self):
        return getattr, (self.obj, self.name)


@pytest.mark.parametrize('target', ['history_method', 'tensor_method'])
def test_other_getattr_is_refused(target):
    from mmprune.checkpoint import allow_mmengine_types
    allow_mmengine_types()
    from mmengine.logging import HistoryBuffer
    obj = _Getattr(HistoryBuffer, 'register_statistics') if target == 'history_method' \
        else _Getattr(torch.Tensor, 'tolist')
    buf = io.BytesIO()
    torch.save({'x': obj}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError, match='refused getattr'):
        torch.load(buf, weights_only=True)


@pytest.mark.parametrize('content, match', [
    (b'', 'is empty'),
    ('truncated', 'looks truncated or damaged'),
    (b'model = dict(type="RetinaNet")\n', r'not a PyTorch checkpoint \(it starts with'),
])
def test_unreadable_checkpoints_are_named_with_fitting_advice(tmp_path, content, match):
    from mmprune.checkpoint import load_checkpoint_file
    path = tmp_path / 'bad.pth'
    if content == 'truncated':
        torch.save(dict(state_dict={'w': torch.zeros(1000)}), path)
        content = path.read_bytes()[:-200]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        load_checkpoint_file(str(path))
    assert str(path) in str(e.value) and 'weights_only=False' not in str(e.value)


def test_a_missing_checkpoint_fails_before_the_model_is_built(monkeypatch):
    import mmprune
    from mmengine.registry import MODELS
    monkeypatch.setattr(MODELS, 'build', lambda *a, **k: pytest.fail('model built'))
    with pytest.raises(FileNotFoundError, match='no/such.pth'):
        mmprune.build_model('mmprune::tiny/retinanet_r18_tiny.py', 'no/such.pth')
