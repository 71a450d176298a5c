#!/usr/bin/env bash
# Dense models trained for the same total budget as the 50 % zoo recipe: the dense
# parent's weights, then the same finetune schedule without pruning.
set -x
export OMP_NUM_THREADS=1
MMDET=$(.venv/bin/python -c 'import mmdet,os;print(os.path.dirname(mmdet.__file__))')
MMSEG=$(.venv/bin/python -c 'import mmseg,os;print(os.path.dirname(mmseg.__file__))')
.venv/bin/python $MMDET/.mim/tools/train.py work_dirs/baseline_cfgs/retinanet_mbv2_fpn_bccd.py --work-dir work_dirs/bccd_retinanet_dense_plus12 \
  --cfg-options load_from=work_dirs/bccd_retinanet_dense/best_pascal_voc_mAP_epoch_12.pth
.venv/bin/python $MMDET/.mim/tools/train.py work_dirs/baseline_cfgs/fcos_mbv2_fpn_bccd.py --work-dir work_dirs/bccd_fcos_dense_plus12 \
  --cfg-options load_from=work_dirs/bccd_fcos_dense/best_pascal_voc_mAP_epoch_12.pth
.venv/bin/python $MMSEG/.mim/tools/train.py work_dirs/baseline_cfgs/fpn_mbv2_camvid.py --work-dir work_dirs/camvid_fpn_dense_plus400 \
  --cfg-options load_from=work_dirs/camvid_fpn_dense/best_mIoU_iter_1000.pth train_cfg.max_iters=400 train_cfg.val_interval=400 \
  default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4
.venv/bin/python $MMSEG/.mim/tools/train.py work_dirs/baseline_cfgs/deeplabv3plus_mbv2_camvid.py --work-dir work_dirs/camvid_dlv3p_dense_plus400 \
  --cfg-options load_from=work_dirs/camvid_dlv3p_dense/best_mIoU_iter_1000.pth train_cfg.max_iters=400 train_cfg.val_interval=400 \
  default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4
