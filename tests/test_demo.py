"""The embedded shapes dataset and the demo that runs on it."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT


def test_shapes_are_deterministic_and_consistent(tmp_path):
    from mmprune.shapes import SPLITS, ensure_shapes
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    ensure_shapes(a)
    ensure_shapes(b)
    for split in SPLITS:
        assert open(f'{a}/{split}.json').read() == open(f'{b}/{split}.json').read()
    ann = json.load(open(f'{a}/val.json'))
    assert len(ann['images']) == SPLITS['val'] and len(ann['annotations']) >= 2 * SPLITS['val']
    # every box holds its class in the semantic mask
    by_image = {}
    for x in ann['annotations']:
        by_image.setdefault(x['image_id'], []).append(x)
    for img in ann['images'][:10]:
        mask = np.array(Image.open(f'{a}/val/masks/{img["file_name"]}'))
        for x in by_image.get(img['id'], []):
            x0, y0, w, h = (int(round(v)) for v in x['bbox'])
            assert (mask[y0:y0 + h, x0:x0 + w] == x['category_id']).mean() > 0.3
    assert set(np.unique(mask)) <= {0, 1, 2, 3}
    ensure_shapes(a)  # a second call reads what is there
    with pytest.raises(ValueError, match='seed'):
        ensure_shapes(a, seed=1)
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'mine.txt').write_text('user file')
    with pytest.raises(FileExistsError, match='not a shapes dataset'):
        ensure_shapes(str(tmp_path / 'c'))


def test_registered_for_mmdet_and_mmseg(tmp_path):
    from mmengine.registry import init_default_scope
    root = str(tmp_path / 'shapes') + '/'
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS as DET
    det = DET.build(dict(type='mmprune.ShapesDetection', data_root=root, split='val',
                         pipeline=[]))
    assert det.metainfo['classes'] == ('circle', 'square', 'triangle') and len(det) == 60
    assert all('mask' in i for i in det[0]['instances'])
    init_default_scope('mmseg')
    from mmseg.registry import DATASETS as SEG
    seg = SEG.build(dict(type='mmprune.ShapesSegmentation', data_root=root, split='train',
                         pipeline=[]))
    assert len(seg) == 240 and seg.metainfo['classes'][0] == 'background'


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    """README's demo, shortened: 1 dense epoch, then the recipe (PruningHook steps while
    finetuning) for 1 epoch (a few minutes alone on 2 cores; `pytest -m slow`)."""
    proc = subprocess.run([sys.executable, '-m', 'mmprune', 'demo',
                           '--work-dir', str(tmp_path / 'demo'), '--data-root',
                           str(tmp_path / 'shapes'), '--epochs', '1', '--finetune-epochs', '1',
                           '--latency-runs', '2'],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '| flops0.5 |' in proc.stdout and 'dense coco/bbox_mAP' in proc.stdout
    rows = json.load(open(tmp_path / 'demo' / 'demo.json'))['rows']
    # one step in a one-epoch run: the target within the search's 2 %
    assert abs(rows[1]['flops'] / rows[0]['flops'] - 0.5) <= 0.02 + 1e-9
    assert open(tmp_path / 'demo' / 'demo.png', 'rb').read(4) == b'\x89PNG'
