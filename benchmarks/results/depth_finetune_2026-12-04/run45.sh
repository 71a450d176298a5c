#!/bin/bash
# run4.sh's remaining runs (BCCD FCOS) and run5.sh's (BCCD RetinaNet, all blocks + width at
# 2x), on the code of the other depth_acc runs: a worktree of that commit (/work/frozen),
# after the run in flight ends
W=/work/main/work_dirs
cd /work/frozen
while pgrep -f "tools/prune_train.py" > /dev/null; do sleep 10; done
PY="env PYTHONPATH=/work/frozen /work/main/.venv/bin/python"
BCCD="--begin 0 --end 3 --interval 1 --cfg-options"
run() { # name config ckpt seed mode latency tag
  local name=$1 cfg=$2 ckpt=$3 seed=$4 mode=$5 lat=$6 tag=$7
  local wd=$W/depth_acc/${name}_${mode}${tag}_s${seed}
  [ -f $wd/prune_train_summary.json ] && return
  rm -rf $wd
  local extra="--target-latency $lat"
  [ $mode = both ] && extra="$extra --remove-blocks 0.5"
  [ $mode = depth ] && extra="$extra --remove-blocks 1.0"
  echo "$(date +%T) start $wd ($(git rev-parse --short HEAD))"
  $PY tools/prune_train.py $cfg --checkpoint $ckpt $extra --latency-runs 20 --work-dir $wd $BCCD randomness.seed=$seed > $wd.log 2>&1
  local rc=$?; echo "$(date +%T) end $wd rc=$rc"
}
C="bccd_fcos configs/bccd/fcos_mbv2_fpn_bccd.py $W/bccd_fcos_dense/best_pascal_voc_mAP_epoch_12.pth"
R="bccd_retinanet configs/bccd/retinanet_mbv2_fpn_bccd.py $W/bccd_retinanet_dense/best_pascal_voc_mAP_epoch_12.pth"
for seed in 0 1; do for mode in width depth both; do run $C $seed $mode 0.667 _x1.5; done; done
for seed in 0 1; do for mode in width both; do run $C $seed $mode 0.5 ""; done; done
for seed in 0 1; do run $R $seed depth 0.5 ""; done
