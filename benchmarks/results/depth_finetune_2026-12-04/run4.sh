#!/bin/bash
# BCCD FCOS-MobileNetV2: 1.5x width / depth (all blocks, width only if short) / both
# (half the blocks), then 2x width / both; seeds 0 and 1; the 50 % recipe's schedule
cd /work/main
PY=.venv/bin/python
BCCD="--begin 0 --end 3 --interval 1 --cfg-options"
run() { # name config ckpt seed mode latency tag
  local name=$1 cfg=$2 ckpt=$3 seed=$4 mode=$5 lat=$6 tag=$7
  local wd=work_dirs/depth_acc/${name}_${mode}${tag}_s${seed}
  [ -f $wd/prune_train_summary.json ] && return
  rm -rf $wd
  local extra="--target-latency $lat"
  [ $mode = both ] && extra="$extra --remove-blocks 0.5"
  [ $mode = depth ] && extra="$extra --remove-blocks 1.0"
  echo "$(date +%T) start $wd"
  $PY tools/prune_train.py $cfg --checkpoint $ckpt $extra --latency-runs 20 --work-dir $wd $BCCD randomness.seed=$seed > $wd.log 2>&1
  echo "$(date +%T) end $wd rc=$?"
}
C="bccd_fcos configs/bccd/fcos_mbv2_fpn_bccd.py work_dirs/bccd_fcos_dense/best_pascal_voc_mAP_epoch_12.pth"
for seed in 0 1; do for mode in width depth both; do run $C $seed $mode 0.667 _x1.5; done; done
for seed in 0 1; do for mode in width both; do run $C $seed $mode 0.5 ""; done; done
