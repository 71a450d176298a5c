#!/bin/bash
# after run7.sh: re-time the new runs in one quiet process, then the CPU efficiency and
# speed rows of benchmarks/depth.py; one job at a time
cd /work/main
while pgrep -f "run7.sh|tools/prune_train.py|ci-check|pytest" > /dev/null; do sleep 10; done
PY=.venv/bin/python
D=work_dirs/depth_acc
echo "$(date +%T) retime"
$PY benchmarks/runs_speed.py $D/camvid_dlv3p_*/ --runs 20 --out $D/runs_speed_dlv3p.json > $D/runs_speed_dlv3p.log 2>&1
rc=$?; echo "$(date +%T) retime bccd rc=$rc"
$PY benchmarks/runs_speed.py $D/bccd_fcos_both_s?/ $D/bccd_fcos_both_cwd_s?/ $D/bccd_retinanet_depth_s?/ $D/bccd_retinanet_auto_cwd_s?/ --runs 20 --out $D/runs_speed_cwd.json > $D/runs_speed_cwd.log 2>&1
rc=$?; echo "$(date +%T) flops50 rc=$rc"
$PY benchmarks/depth.py --models segformer_b0 deeplabv3plus_r50 --modes --speedups --flops 0.5 --block-shares 0 0.5 1 --runs 6 --out work_dirs/depth_flops50.json > work_dirs/depth_flops50.log 2>&1
rc=$?; echo "$(date +%T) r50 2x rc=$rc"
$PY benchmarks/depth.py --models faster_rcnn_r50 pspnet_r50 deeplabv3plus_r50 --speedups 2 --runs 3 --out work_dirs/depth_cpu_r50.json > work_dirs/depth_cpu_r50.log 2>&1
rc=$?; echo "$(date +%T) done rc=$rc"
