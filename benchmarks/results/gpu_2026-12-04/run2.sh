# second device check: bash .gpu/run2.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
depth() { python3 -c "
import mmcv_ext_shim, runpy, sys
sys.argv = ['depth.py'] + sys.argv[1:]
runpy.run_path('benchmarks/depth.py', run_name='__main__')" --device cuda --runs 50 "$@" 2>&1 | grep --line-buffered -v -i warn | grep --line-buffered -v "mmengine - INFO"; }
timeout 200 bash -c "$(declare -f depth); depth --speedups 1.5 2 --modes width depth --shape 512 512 --models pspnet_r50 faster_rcnn_r50 --out $OUT/depth_gpu2.json" | tee $OUT/depth2.log
timeout 120 bash -c "$(declare -f depth); depth --speedups 1.5 --modes width depth --shape 1024 1024 --models deeplabv3plus_r50 segformer_b0 --out $OUT/depth_gpu_1024.json" | tee $OUT/depth3.log
