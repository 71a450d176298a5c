"""An embedded dataset: coloured shapes on noisy backgrounds, drawn from a seed.

Nothing is downloaded: the first dataset built on a ``data_root`` draws the
images there (a few seconds), then every later run reads the same files.

* ``mmprune.ShapesDetection``: mmdet ``CocoDataset`` with boxes and instance
  polygons (``train.json``/``val.json``, ``{split}/images/*.png``); evaluate
  with ``CocoMetric(ann_file=data_root + 'val.json')`` (written with the
  images, so before the metric is built).
* ``mmprune.ShapesSegmentation``: mmseg ``BaseSegDataset`` with semantic masks
  (``{split}/masks/*.png``; 0 background, 1 circle, 2 square, 3 triangle).

Both read the same images, so one ``data_root`` serves both tasks.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from .registry import DATASETS

CLASSES = ('circle', 'square', 'triangle')
PALETTE = [(220, 20, 60), (0, 130, 230), (250, 170, 30)]
#: images per split and their size, fixed so that every machine draws the same set
SPLITS = {'train': 240, 'val': 60}
SIZE = (128, 160)  # h, w
VERSION = 1


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if kind == 0:
        n, start = 24, 0.0
    elif kind == 1:
        n, start = 4, np.pi / 4 + angle
    else:
        n, start = 3, -np.pi / 2 + angle
    t = start + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def draw_image(rng: np.random.Generator, size=SIZE):
    """One image: noisy background and 2-5 non-overlapping shapes.

    Returns the image (h, w, 3 uint8 RGB), the semantic mask (h, w uint8) and
    the instances (class index, polygon)."""
    import cv2
    h, w = size
    base = rng.integers(30, 110, 3)
    img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    instances, discs = [], []
    for _ in range(int(rng.integers(2, 6))):
        for _attempt in range(20):
            r = float(rng.uniform(9, 26))
            cx, cy = float(rng.uniform(r + 2, w - r - 2)), float(rng.uniform(r + 2, h - r - 2))
            if all((cx - x) ** 2 + (cy - y) ** 2 > (r + rr + 3) ** 2 for x, y, rr in discs):
                break
        else:
            continue
        discs.append((cx, cy, r))
        kind = int(rng.integers(0, 3))
        poly = _polygon(kind, cx, cy, r, float(rng.uniform(0, np.pi / 2)))
        colour = [int(c) for c in np.clip(np.array(PALETTE[kind]) + rng.integers(-40, 40, 3),
                                          0, 255)]
        pts = np.round(poly).astype(np.int32)
        cv2.fillPoly(img, [pts], colour)
        cv2.fillPoly(mask, [pts], kind + 1)
        instances.append((kind, poly))
    return img, mask, instances


def write_split(root: str, split: str, n: int, seed: int) -> None:
    from PIL import Image
    rng = np.random.default_rng([seed, list(SPLITS).index(split)])
    for sub in ('images', 'masks'):
        os.makedirs(os.path.join(root, split, sub), exist_ok=True)
    images, anns = [], []
    for i in range(n):
        img, mask, instances = draw_image(rng)
        name = f'{i:04d}.png'
        Image.fromarray(img).save(os.path.join(root, split, 'images', name))
        Image.fromarray(mask).save(os.path.join(root, split, 'masks', name))
        images.append(dict(id=i, file_name=name, height=SIZE[0], width=SIZE[1]))
        for kind, poly in instances:
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            anns.append(dict(id=len(anns) + 1, image_id=i, category_id=kind + 1, iscrowd=0,
                             bbox=[round(float(x0), 2), round(float(y0), 2),
                                   round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
                             area=round(float(_area(poly)), 2),
                             segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]]))
    cats = [dict(id=k + 1, name=c) for k, c in enumerate(CLASSES)]
    with open(os.path.join(root, f'{split}.json'), 'w') as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def ensure_shapes(root: str, seed: int = 0) -> str:
    """Draw the dataset under ``root`` unless it is there already; returns ``root``.

    Drawn in a temporary folder beside ``root`` and renamed into place, so a
    crash or a second process never leaves a half-written set."""
    stamp = os.path.join(root, 'shapes.json')
    if os.path.isfile(stamp):
        info = json.load(open(stamp))
        if info.get('seed') != seed or info.get('version') != VERSION:
            raise ValueError(f'{root} holds the shapes dataset drawn with seed {info.get("seed")} '
                             f'(version {info.get("version")}), not seed {seed} (version '
                             f'{VERSION}); choose another data_root or remove it')
        return root
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f'{root} exists and is not a shapes dataset; choose another '
                              f'data_root')
    parent = os.path.dirname(os.path.abspath(root.rstrip('/')))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix='.shapes-')
    try:
        for split, n in SPLITS.items():
            write_split(tmp, split, n, seed)
        with open(os.path.join(tmp, 'shapes.json'), 'w') as f:
            json.dump(dict(seed=seed, version=VERSION, splits=SPLITS, size=SIZE,
                           classes=CLASSES), f)
        if os.path.isdir(root) and not os.listdir(root):
            os.rmdir(root)
        try:
            os.rename(tmp, root.rstrip('/'))
        except OSError:  # another process finished first: theirs is the same set
            if not os.path.isfile(stamp):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _detection_base():
    from mmdet.datasets import CocoDataset
    return CocoDataset


def _segmentation_base():
    from mmseg.datasets import BaseSegDataset
    return BaseSegDataset


@DATASETS.register_module()
class ShapesDetection(_detection_base()):
    """mmdet ``CocoDataset`` over the drawn shapes; ``split`` is 'train' or 'val'."""

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, split: str = 'train', seed: int = 0, data_root: str = 'data/shapes/',
                 **kwargs):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {list(SPLITS)}, got {split!r}')
        ensure_shapes(data_root, seed)
        kwargs.setdefault('ann_file', f'{split}.json')
        kwargs.setdefault('data_prefix', dict(img=f'{split}/images/'))
        super().__init__(data_root=data_root, **kwargs)


@DATASETS.register_module()
class ShapesSegmentation(_segmentation_base()):
    """mmseg ``BaseSegDataset`` over the drawn shapes' semantic masks."""

    METAINFO = dict(classes=('background',) + CLASSES, palette=[(0, 0, 0)] + PALETTE)

    def __init__(self, split: str = 'train', seed: int = 0, data_root: str = 'data/shapes/',
                 **kwargs):
        if split not in SPLITS:
            raise ValueError(f'split must be one of {list(SPLITS)}, got {split!r}')
        ensure_shapes(data_root, seed)
        kwargs.setdefault('data_prefix', dict(img_path=f'{split}/images',
                                              seg_map_path=f'{split}/masks'))
        kwargs.setdefault('img_suffix', '.png')
        kwargs.setdefault('seg_map_suffix', '.png')
        super().__init__(data_root=data_root, **kwargs)
