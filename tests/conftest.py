import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny')
SHARED_DATA = os.path.abspath(os.path.join(ROOT, '..', 'shared', 'data'))


def tiny(name: str) -> str:
    return os.path.join(TINY, f'{name}.py')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tensor_outputs(model, batch):
    from mmprune.graph import tensor_forward
    model.eval()
    with torch.no_grad():
        return tensor_forward(model, batch)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
