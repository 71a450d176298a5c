#!/bin/bash
# after run.sh's BCCD RetinaNet / CamVid FPN 2x runs: redo camvid_fpn_both_s0 (failed before
# the preprocessor fix), then 1.5x: width / depth (all blocks, width only if short) / both
cd /work/main
while [ ! -f work_dirs/depth_acc/camvid_fpn_both_s1/prune_train_summary.json ]; do
  grep -q "end work_dirs/depth_acc/camvid_fpn_both_s1" work_dirs/depth_acc/run.log && break
  sleep 20
done
pkill -f depth_acc/run.sh; sleep 1; pkill -f "depth_acc/camvid_dlv3p"; sleep 5
PY=.venv/bin/python
CAMVID="--by-iter --begin 0 --end 300 --interval 100 --cfg-options train_cfg.max_iters=400 train_cfg.val_interval=400 default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4"
BCCD="--begin 0 --end 3 --interval 1 --cfg-options"
run() { # name config ckpt seed mode latency tag
  local name=$1 cfg=$2 ckpt=$3 seed=$4 mode=$5 lat=$6 tag=$7 sched
  local wd=work_dirs/depth_acc/${name}_${mode}${tag}_s${seed}
  [ -f $wd/prune_train_summary.json ] && return
  rm -rf $wd
  local extra="--target-latency $lat"
  [ $mode = both ] && extra="$extra --remove-blocks 0.5"
  [ $mode = depth ] && extra="$extra --remove-blocks 1.0"
  case $name in camvid*) sched="$CAMVID randomness.seed=$seed";; *) sched="$BCCD randomness.seed=$seed";; esac
  echo "$(date +%T) start $wd"
  $PY tools/prune_train.py $cfg --checkpoint $ckpt $extra --latency-runs 20 --work-dir $wd $sched > $wd.log 2>&1
  echo "$(date +%T) end $wd rc=$?"
}
R="bccd_retinanet configs/bccd/retinanet_mbv2_fpn_bccd.py work_dirs/bccd_retinanet_dense/best_pascal_voc_mAP_epoch_12.pth"
F="camvid_fpn configs/camvid/fpn_mbv2_camvid.py work_dirs/camvid_fpn_dense/best_mIoU_iter_1000.pth"
run $F 0 both 0.5 ""
for seed in 0 1; do
  for m in "$R" "$F"; do for mode in width depth both; do run $m $seed $mode 0.667 _x1.5; done; done
done
