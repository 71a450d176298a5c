#!/bin/bash
# DeepLabV3+ CamVid 2x width alone, seed 1 (--remove-blocks 0: target_latency now removes
# blocks first by default, so run8.sh's run became the 'auto' row), beside the re-trained parent
W=/work/main/work_dirs
cd /work/frozen
while pgrep -f "work_dirs/run8.sh" > /dev/null; do sleep 10; done
PY="env PYTHONPATH=/work/frozen /work/main/.venv/bin/python"
FT="train_cfg.max_iters=400 train_cfg.val_interval=400 default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4"
CK=$W/camvid_dlv3p_dense2/best_mIoU_iter_1000.pth
wd=$W/depth_acc/camvid_dlv3p_width0_s1
echo "$(date +%T) start"
$PY tools/prune_train.py configs/camvid/deeplabv3plus_mbv2_camvid.py --checkpoint $CK --target-latency 0.5 \
  --remove-blocks 0 --latency-runs 20 --work-dir $wd --by-iter --begin 0 --end 300 --interval 100 \
  --cfg-options $FT randomness.seed=1 > $wd.log 2>&1
echo "$(date +%T) width s1 rc=$?"
