#!/bin/bash
# width vs both at a 2x measured CPU speed-up, zoo 50 % finetune schedule, seeds 0 and 1
cd /work/main
PY=.venv/bin/python
CAMVID="--by-iter --begin 0 --end 300 --interval 100 --cfg-options train_cfg.max_iters=400 train_cfg.val_interval=400 default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4"
BCCD="--begin 0 --end 3 --interval 1 --cfg-options"
run() { # name config ckpt seed mode
  local name=$1 cfg=$2 ckpt=$3 seed=$4 mode=$5 sched
  local wd=work_dirs/depth_acc/${name}_${mode}_s${seed}
  [ -f $wd/prune_train_summary.json ] && return
  local extra="--target-latency 0.5"
  [ $mode = both ] && extra="$extra --remove-blocks 0.5"
  case $name in camvid*) sched="$CAMVID randomness.seed=$seed";; *) sched="$BCCD randomness.seed=$seed";; esac
  echo "$(date +%T) start $wd"
  $PY tools/prune_train.py $cfg --checkpoint $ckpt $extra --latency-runs 20 --work-dir $wd $sched > $wd.log 2>&1
  echo "$(date +%T) end $wd rc=$?"
}
R="bccd_retinanet configs/bccd/retinanet_mbv2_fpn_bccd.py work_dirs/bccd_retinanet_dense/best_pascal_voc_mAP_epoch_12.pth"
F="camvid_fpn configs/camvid/fpn_mbv2_camvid.py work_dirs/camvid_fpn_dense/best_mIoU_iter_1000.pth"
C="bccd_fcos configs/bccd/fcos_mbv2_fpn_bccd.py work_dirs/bccd_fcos_dense/best_pascal_voc_mAP_epoch_12.pth"
D="camvid_dlv3p configs/camvid/deeplabv3plus_mbv2_camvid.py work_dirs/camvid_dlv3p_dense/best_mIoU_iter_1000.pth"
for seed in 0 1; do
  for m in "$R" "$F"; do for mode in width both; do run $m $seed $mode; done; done
done
for m in "$D" "$C"; do for seed in 0 1; do for mode in width both; do run $m $seed $mode; done; done; done
