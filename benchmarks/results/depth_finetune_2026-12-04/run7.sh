#!/bin/bash
# run6.sh's DeepLabV3+ runs in this order, with the BCCD 2x runs with distillation from the
# dense parent (--distill cwd; RetinaNet with --remove-blocks auto) before DeepLabV3+'s 2x
# width; same worktree (/work/frozen)
W=/work/main/work_dirs
cd /work/frozen
while pgrep -f "tools/prune_train.py" > /dev/null; do sleep 10; done
PY="env PYTHONPATH=/work/frozen /work/main/.venv/bin/python"
CAMVID="--by-iter --begin 0 --end 300 --interval 100 --cfg-options train_cfg.max_iters=400 train_cfg.val_interval=400 default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4"
BCCD="--begin 0 --end 3 --interval 1 --cfg-options"
run() { # name config ckpt seed mode latency tag [extra args]
  local name=$1 cfg=$2 ckpt=$3 seed=$4 mode=$5 lat=$6 tag=$7 sched
  local wd=$W/depth_acc/${name}_${mode}${tag}_s${seed}
  [ -f $wd/prune_train_summary.json ] && return
  rm -rf $wd
  local extra="--target-latency $lat $8"
  [ $mode = both ] && extra="$extra --remove-blocks 0.5"
  [ $mode = depth ] && extra="$extra --remove-blocks 1.0"
  [ $mode = auto ] && extra="$extra --remove-blocks auto"
  case $name in camvid*) sched="$CAMVID randomness.seed=$seed";; *) sched="$BCCD randomness.seed=$seed";; esac
  echo "$(date +%T) start $wd ($(git rev-parse --short HEAD))"
  $PY tools/prune_train.py $cfg --checkpoint $ckpt $extra --latency-runs 20 --work-dir $wd $sched > $wd.log 2>&1
  local rc=$?; echo "$(date +%T) end $wd rc=$rc"
}
D="camvid_dlv3p configs/camvid/deeplabv3plus_mbv2_camvid.py $W/camvid_dlv3p_dense/best_mIoU_iter_1000.pth"
C="bccd_fcos configs/bccd/fcos_mbv2_fpn_bccd.py $W/bccd_fcos_dense/best_pascal_voc_mAP_epoch_12.pth"
R="bccd_retinanet configs/bccd/retinanet_mbv2_fpn_bccd.py $W/bccd_retinanet_dense/best_pascal_voc_mAP_epoch_12.pth"
for seed in 0 1; do for mode in width depth both; do run $D $seed $mode 0.667 _x1.5; done; done
for seed in 0 1; do run $D $seed both 0.5 ""; done
for seed in 0 1; do run $C $seed both 0.5 _cwd "--distill cwd"; done
for seed in 0 1; do run $R $seed auto 0.5 _cwd "--distill cwd"; done
for seed in 0 1; do run $D $seed width 0.5 ""; done
