"""Which pruned zoo families mmdeploy exports end to end, and do they run in ONNX Runtime.

    python benchmarks/deploy.py [--families retinanet fcos ...] [--ratio 0.5]
                                [--out benchmarks/results/deploy_DATE.json]

Each family's zoo config is built with random weights (nothing downloaded), pruned
(``mmprune.prune``, ``pruning_ratio``, default 0.5, at 512x512), saved as a pruned
config + checkpoint, exported with ``mmprune.deploy.export_end2end`` (the project's
deploy configs: detection dynamic, segmentation static at 576x576, where every pooling
bin of PSPNet / UPerNet divides the feature size) and run in ONNX Runtime beside
PyTorch on one synthetic image through mmdeploy's models. Random detectors score
about 0.01 everywhere and detect nothing at the 0.05 threshold, so for detectors the
row says that the graph runs, not that predictions agree (the tests and
``docs/deploy.md`` cover agreement); segmentors compare their label maps. Prints a
table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time
import traceback

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

FAMILIES = {
    'retinanet': 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'fcos': 'mmdet::fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'atss': 'mmdet::atss/atss_r50_fpn_1x_coco.py',
    'yolox': 'mmdet::yolox/yolox_s_8xb8-300e_coco.py',
    'rtmdet': 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'faster-rcnn': 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mask-rcnn': 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'pspnet': 'mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'deeplabv3plus': 'mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024.py',
    'segformer': 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
    'upernet': 'mmseg::upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py',
}
SEG_SHAPE = (576, 576)


def run_family(name: str, config: str, ratio: float, work: str) -> dict:
    import mmprune
    from mmdeploy.apis import build_task_processor
    from mmdeploy.utils import get_input_shape
    from mmprune.deploy.check import agreement, file_mb, onnx_ops
    from mmprune.deploy.export import export_end2end, task_of_config, test_images
    row = dict(family=name, config=config)
    t0 = time.perf_counter()
    model, cfg = mmprune.build_model(config)
    result = mmprune.prune(model, pruning_ratio=ratio, cfg=cfg, input_shape=(512, 512))
    row.update(flops_ratio=round(result.flops_ratio, 3))
    cfg_path, ckpt = mmprune.save_pruned(model, result.structure, cfg, work, name=name)
    model_cfg = mmprune.load_config(cfg_path)
    task = task_of_config(model_cfg)
    shape = SEG_SHAPE if task == 'segmentation' else None
    image = test_images(model_cfg, 1, shape or (512, 512))[0]
    try:
        onnx_file, model_cfg, deploy_cfg = export_end2end(
            cfg_path, ckpt, osp.join(work, name + '_onnx'), image=image, shape=shape)
    except Exception as e:  # noqa: BLE001 - a row of the table
        row.update(outcome='export fails', reason=f'{type(e.__cause__ or e).__name__}: '
                   f'{str(e.__cause__ or e).strip()[:300]}')
        return row
    row.update(onnx_mb=file_mb(onnx_file), ops=onnx_ops(onnx_file),
               export_s=round(time.perf_counter() - t0, 1))
    try:
        tp = build_task_processor(model_cfg, deploy_cfg, 'cpu')
        torch_model = tp.build_pytorch_model(ckpt)
        backend = tp.build_backend_model([onnx_file],
                                         data_preprocessor_updater=tp.update_data_preprocessor)
        row['agreement'] = agreement(tp, torch_model, backend, [image],
                                     get_input_shape(deploy_cfg))
        row['outcome'] = 'exports, runs in ONNX Runtime'
    except Exception as e:  # noqa: BLE001
        row.update(outcome='exports, fails in ONNX Runtime',
                   reason=f'{type(e).__name__}: {str(e).strip()[:300]}')
    return row


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--families', nargs='+', default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument('--ratio', type=float, default=0.5)
    p.add_argument('--out', default=osp.join(ROOT, 'benchmarks', 'results',
                                             f'deploy_{time.strftime("%Y-%m-%d")}.json'))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.families:
            t = time.perf_counter()
            try:
                row = run_family(name, FAMILIES[name], args.ratio, work)
            except Exception as e:  # noqa: BLE001 - the prune or build failed
                row = dict(family=name, config=FAMILIES[name], outcome='prune fails',
                           reason=f'{type(e).__name__}: {e}'[:300])
                traceback.print_exc()
            row['seconds'] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != 'ops'}), flush=True)
    print('\n| family | FLOPs | outcome | ONNX MB | agreement / reason |\n|---|---|---|---|---|')
    for r in rows:
        a = r.get('agreement') or {}
        what = (f'{a["equal"] / max(a["pixels"], 1):.2%} of pixels alike' if 'pixels' in a else
                f'{a.get("matched", 0)} matched of {a.get("torch", 0)} PyTorch / '
                f'{a.get("ort", 0)} ORT detections'
                if a else r.get('reason', ''))
        print(f'| {r["family"]} | {r.get("flops_ratio", "-")} | {r["outcome"]} | '
              f'{r.get("onnx_mb", "-")} | {what} |')
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    json.dump(rows, open(args.out, 'w'), indent=1, default=str)
    return rows


if __name__ == '__main__':
    main()
