# device check: bash .gpu/run.sh (on the lent GPU machine; $OUT comes back)
set -x
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, mmcv, mmengine, mmdet, mmseg, torch_pruning; print(torch.__version__, mmcv.__version__, mmdet.__version__, mmseg.__version__)"
timeout ${SMOKE_S:-130} python3 .gpu/smoke.py cuda $OUT/smoke.json 2>&1 | grep --line-buffered -v -i warn | tee $OUT/smoke.log
timeout ${DEPTH_S:-300} python3 -c "
import mmcv_ext_shim, runpy, sys
sys.argv = ['depth.py'] + sys.argv[1:]
runpy.run_path('benchmarks/depth.py', run_name='__main__')" --device cuda --runs 50 --speedups 1.5 2 --shape 512 512 --models segformer_b0 deeplabv3plus_r50 retinanet_r50 pspnet_r50 --out $OUT/depth_gpu.json 2>&1 | grep --line-buffered -v -i warn | tee $OUT/depth.log
