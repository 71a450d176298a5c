#!/bin/bash
# DeepLabV3+ CamVid 2x width, seed 1: its dense parent re-trained (the first one is not on
# this machine), the same-budget dense baseline from it, then the pruned run (run7.sh's
# command); same worktree (/work/frozen)
# Note: target_latency removes blocks first by default (remove_blocks='auto'), so the last
# run, named width_s1 here, is the 'auto' row (records camvid_dlv3p_auto_s1_*); run9.sh is the width row.
W=/work/main/work_dirs
cd /work/frozen
PY="env PYTHONPATH=/work/frozen /work/main/.venv/bin/python"
MMSEG=$(/work/main/.venv/bin/python -c 'import mmseg,os;print(os.path.dirname(mmseg.__file__))')
FT="train_cfg.max_iters=400 train_cfg.val_interval=400 default_hooks.checkpoint.interval=400 param_scheduler.1.end=400 optim_wrapper.optimizer.lr=5e-4"
echo "$(date +%T) dense"
[ -f $W/camvid_dlv3p_dense2/best_mIoU_iter_1000.pth ] || \
  $PY $MMSEG/.mim/tools/train.py configs/camvid/deeplabv3plus_mbv2_camvid.py --work-dir $W/camvid_dlv3p_dense2 > $W/camvid_dlv3p_dense2.log 2>&1
echo "$(date +%T) dense rc=$?"; ls $W/camvid_dlv3p_dense2/*.pth
CK=$(ls $W/camvid_dlv3p_dense2/best_mIoU_iter_*.pth | tail -1)
[ -d $W/camvid_dlv3p_dense2_plus400 ] || \
  $PY $MMSEG/.mim/tools/train.py $W/baseline_cfgs/deeplabv3plus_mbv2_camvid.py --work-dir $W/camvid_dlv3p_dense2_plus400 \
  --cfg-options load_from=$CK $FT > $W/camvid_dlv3p_dense2_plus400.log 2>&1
echo "$(date +%T) plus400 rc=$?"
wd=$W/depth_acc/camvid_dlv3p_width_s1
$PY tools/prune_train.py configs/camvid/deeplabv3plus_mbv2_camvid.py --checkpoint $CK --target-latency 0.5 \
  --latency-runs 20 --work-dir $wd --by-iter --begin 0 --end 300 --interval 100 \
  --cfg-options $FT randomness.seed=1 > $wd.log 2>&1
echo "$(date +%T) width s1 rc=$?"
