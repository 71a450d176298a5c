#!/bin/bash
# DeepLabV3+-MobileNetV2 CamVid: width / depth / both at 1.5x and width / both at 2x measured
# CPU speed-up, the zoo's 50 % finetune schedule, seeds 0 and 1; from a worktree of the
# commit under test (/work/frozen) so that main may change meanwhile
W=/work/main/work_dirs
cd /work/frozen
PY="env PYTHONPATH=/work/frozen /work/main/.venv/bin/python"
CAMVID="--by-iter --begin 0 --end 300 --interval 100 --cfg-options train_cfg.max_iters=400 train_cfg.val_interval=400 default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4"
run() { # name config ckpt seed mode latency tag
  local name=$1 cfg=$2 ckpt=$3 seed=$4 mode=$5 lat=$6 tag=$7
  local wd=$W/depth_acc/${name}_${mode}${tag}_s${seed}
  [ -f $wd/prune_train_summary.json ] && return
  rm -rf $wd
  local extra="--target-latency $lat"
  [ $mode = both ] && extra="$extra --remove-blocks 0.5"
  [ $mode = depth ] && extra="$extra --remove-blocks 1.0"
  echo "$(date +%T) start $wd ($(git rev-parse --short HEAD))"
  $PY tools/prune_train.py $cfg --checkpoint $ckpt $extra --latency-runs 20 --work-dir $wd $CAMVID randomness.seed=$seed > $wd.log 2>&1
  local rc=$?; echo "$(date +%T) end $wd rc=$rc"
}
D="camvid_dlv3p configs/camvid/deeplabv3plus_mbv2_camvid.py $W/camvid_dlv3p_dense/best_mIoU_iter_1000.pth"
for seed in 0 1; do for mode in width depth both; do run $D $seed $mode 0.667 _x1.5; done; done
for seed in 0 1; do run $D $seed both 0.5 ""; done
for seed in 0 1; do run $D $seed width 0.5 ""; done
