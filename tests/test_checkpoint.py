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
