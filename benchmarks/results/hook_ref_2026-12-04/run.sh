#!/bin/bash
# PruningHook target_latency with each step timed beside the dense copy: BCCD RetinaNet,
# 1.5x width, seeds 0 and 1 (as the depth_acc width_x1.5 runs, on the current code)
cd /work/main
for seed in 0 1; do
  wd=work_dirs/hook_ref/bccd_retinanet_width_x1.5_s$seed
  rm -rf $wd
  echo "$(date +%T) start $wd ($(git rev-parse --short HEAD))"
  .venv/bin/python tools/prune_train.py configs/bccd/retinanet_mbv2_fpn_bccd.py --checkpoint work_dirs/bccd_retinanet_dense/best_pascal_voc_mAP_epoch_12.pth --target-latency 0.667 --latency-runs 20 --work-dir $wd --begin 0 --end 3 --interval 1 --cfg-options randomness.seed=$seed > $wd.log 2>&1
  rc=$?; echo "$(date +%T) end $wd rc=$rc"
done
