import os

import json

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every FLOPs re-count from the small forward is checked against a full-size forward
os.environ.setdefault('MMPRUNE_CHECK_FLOPS', '1')
TINY = os.path.join(ROOT, 'configs', 'tiny')
SHARED_DATA = os.path.abspath(os.path.join(ROOT, '..', 'shared', 'data'))


def tiny(name: str) -> str:
    return os.path.join(TINY, f'{name}.py')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tensor_outputs(model, batch):
    from mmprune.tracing import tensor_forward
    model.eval()
    with torch.no_grad():
        return tensor_forward(model, batch)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


CLASSES = ('cell', 'blob', 'dot')


def make_coco(root, n=4, w=128, h=96):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, 'images'))
    images, anns = [], []
    for i in range(n):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        for j in range(3):
            x, y = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 30))
            img[y:y + 30, x:x + 40] = 200 + 20 * j
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=j + 1,
                             bbox=[x, y, 40, 30], area=1200, iscrowd=0))
        Image.fromarray(img).save(os.path.join(root, 'images', f'{i}.png'))
        images.append(dict(id=i, file_name=f'{i}.png', width=w, height=h))
    cats = [dict(id=k + 1, name=c) for k, c in enumerate(CLASSES)]
    json.dump(dict(images=images, annotations=anns, categories=cats),
              open(os.path.join(root, 'ann.json'), 'w'))
