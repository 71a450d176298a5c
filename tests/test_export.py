"""tools/export_onnx.py: a pruned model's tensor graph in onnxruntime matches PyTorch."""
import json
import os
import subprocess
import sys

import pytest

import mmprune

from conftest import ROOT, tiny


def _export(cfg_path, ckpt, out, cwd):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export_onnx.py'), cfg_path,
                           ckpt, '--out', out, '--input-shape', '96', '96', '--runs', '3'],
                          capture_output=True, text=True, cwd=cwd, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    return proc


@pytest.mark.parametrize('name', ['retinanet_r18_tiny', 'pspnet_r18_tiny'])
def test_pruned_model_exports_and_matches(tmp_path, name):
    model, cfg = mmprune.build_model(tiny(name))
    # 96x96: PSPNet's pyramid pooling (1, 2, 3, 6 bins) must divide the 12x12 feature map,
    # which ONNX's adaptive pooling requires
    result = mmprune.prune(model, 0.5, cfg=cfg, input_shape=(96, 96))
    cfg_path, ckpt = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path), name='m')
    out = str(tmp_path / 'm.onnx')
    proc = _export(cfg_path, ckpt, out, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'max abs diff PyTorch vs onnxruntime' in proc.stdout
    summary = json.load(open(out + '.json'))
    assert summary['max_abs_diff'] < 1e-3 and summary['ort_cpu_ms'] > 0
    assert summary['params'] == result.params[1] and os.path.getsize(out) > 0


def test_two_stage_detector_is_refused_with_a_reason(tmp_path):
    model, cfg = mmprune.build_model(tiny('faster_rcnn_r18_tiny'))
    result = mmprune.prune(model, 0.3, cfg=cfg, input_shape=(64, 96))
    cfg_path, ckpt = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path), name='m')
    proc = _export(cfg_path, ckpt, str(tmp_path / 'm.onnx'), str(tmp_path))
    assert proc.returncode != 0 and 'two-stage' in proc.stderr
    assert not os.path.exists(tmp_path / 'm.onnx')


def test_analyze_lists_pruned_channels_against_dense(tmp_path):
    model, cfg = mmprune.build_model(tiny('retinanet_r18_tiny'))
    result = mmprune.prune(model, 0.5, cfg=cfg, input_shape=(64, 96))
    cfg_path, ckpt = mmprune.save_pruned(model, result.structure, cfg, str(tmp_path), name='m')
    report_path = tmp_path / 'analyze.json'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'analyze.py'), cfg_path,
                           ckpt, '--input-shape', '64', '96', '--runs', '2', '--json',
                           str(report_path)], capture_output=True, text=True, cwd=str(tmp_path),
                          timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(report_path))
    assert report['model']['params'] == result.params[1]
    assert report['dense']['params'] == result.params[0]
    assert report['model']['flops'] == result.flops[1] and report['dense']['flops'] == result.flops[0]
    row = next(r for r in report['layers'] if r['layer'] == 'backbone.conv1')
    assert row['dense'] == 16 and row['pruned'] == model.backbone.conv1.out_channels < 16
    assert 'backbone.conv1' in proc.stdout


def test_sweep_table_and_plot(tmp_path):
    from conftest import make_coco
    data = tmp_path / 'coco'
    make_coco(str(data), n=4)
    config = os.path.join(ROOT, 'configs', 'pruning', 'retinanet_r18_tiny_prune-hook.py')
    opts = ['custom_hooks=[]', f'data_root={data}/', f'train_dataloader.dataset.data_root={data}/',
            f'val_dataloader.dataset.data_root={data}/', f'test_dataloader.dataset.data_root={data}/',
            f'val_evaluator.ann_file={data}/ann.json', f'test_evaluator.ann_file={data}/ann.json',
            'model.test_cfg.score_thr=0.0']
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'sweep.py'), config,
                           '--ratios', '0.5', '--target-flops', '0.7', '--finetune-iters', '1',
                           '--work-dir', str(tmp_path / 'sweep'), '--latency-runs', '2',
                           '--cfg-options', *opts], capture_output=True, text=True,
                          cwd=str(tmp_path), timeout=900, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / 'sweep'
    result = json.load(open(out / 'sweep.json'))
    rows = result['rows']
    assert [r['size'] for r in rows] == ['dense', 'ratio0.5', 'flops0.7']
    assert rows[1]['flops'] < rows[0]['flops'] and rows[1]['params'] < rows[0]['params']
    assert abs(rows[2]['flops'] / rows[0]['flops'] - 0.7) <= 0.02 * 0.7
    assert all(r['metrics'][result['metric']] >= 0 for r in rows)
    assert open(out / 'sweep.png', 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    assert '| ratio0.5 |' in open(out / 'sweep.md').read()
    assert os.path.exists(out / 'ratio0.5' / 'finetune' / 'iter_1.pth')


def test_sensitivity_ranks_groups_and_emits_ratios(tmp_path):
    from conftest import make_coco
    data = tmp_path / 'coco'
    make_coco(str(data), n=3)
    config = os.path.join(ROOT, 'configs', 'pruning', 'retinanet_r18_tiny_prune-hook.py')
    opts = ['custom_hooks=[]', f'test_dataloader.dataset.data_root={data}/',
            f'test_evaluator.ann_file={data}/ann.json', 'model.test_cfg.score_thr=0.0']
    ratios = tmp_path / 'ratios.json'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'sensitivity.py'), config,
                           '--layers', 'backbone.layer1.*', 'neck.*', '--max-layers', '2',
                           '--val-samples', '2', '--work-dir', str(tmp_path / 'sens'),
                           '--emit-ratios', str(ratios), '--cfg-options', *opts],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / 'sens' / 'sensitivity.json'))
    measured = [r for r in report['rows'] if 'skipped' not in r]
    assert len(measured) == 2 and all(0 < r['flops_saved'] < 1 for r in measured)
    assert all(r['layer'].startswith(('backbone.layer1.', 'neck.')) for r in measured)
    assert open(tmp_path / 'sens' / 'sensitivity.png', 'rb').read(4) == b'\x89PNG'
    emitted = json.load(open(ratios))
    assert {r['layer'] for r in measured} <= set(emitted)
    assert all(0 <= v <= 0.3 for v in emitted.values())
