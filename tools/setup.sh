#!/usr/bin/env bash
# Set up .venv with the measured stack and mmprune in editable mode. Idempotent:
# a second run checks a stamp and the imports and returns in seconds.
#   bash tools/setup.sh            the stack the tests need
#   bash tools/setup.sh --deploy   and mmdeploy 1.3.1 for `mmprune deploy` (see below)
set -euo pipefail
cd "$(dirname "$0")/.."
DEPLOY=0
for arg in "$@"; do
  case "$arg" in
    --deploy) DEPLOY=1 ;;
    *) echo "usage: bash tools/setup.sh [--deploy]" >&2; exit 2 ;;
  esac
done
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.mmprune-setup"
want="$( (cat tools/setup.sh pyproject.toml; echo "deploy=$DEPLOY") | sha256sum | cut -c1-16)"
imports="import mmprune, mmcv.ops, mmdet, mmseg, torch_pruning, pytest, onnxruntime"
[ "$DEPLOY" = 1 ] && imports="$imports, mmdeploy.apis"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "$imports" 2>/dev/null; then
  echo "[setup] $VENV is up to date"
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.9.1 torchvision==0.24.1
# mmcv 2.1.0 has no wheel for torch 2.9: build it from source (~20-25 min on 2 cores, then
# cached by pip). Its setup.py imports pkg_resources, hence setuptools<70.
pip install -q "setuptools<70" wheel ninja psutil
if ! python -c "import mmcv.ops" 2>/dev/null; then
  MAX_JOBS=${MAX_JOBS:-$(nproc)} pip install --no-build-isolation mmcv==2.1.0
fi
# mmseg imports ftfy and regex without declaring them
pip install -q mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 torch-pruning==1.6.1 \
  ftfy regex pytest onnx onnxruntime
# what some zoo families import: mmpretrain (ConvNeXt / PoolFormer backbones of mmdet and
# mmseg configs), scikit-image (BoxInst), scikit-learn (PAA); benchmarks/coverage.py tries them
pip install -q mmpretrain==1.2.0 scikit-image scikit-learn
pip install -q --no-build-isolation --no-deps -e .
if [ "$DEPLOY" = 1 ]; then
  # mmdeploy pins protobuf<=3.20.2, which breaks `import onnx` of current releases, and never
  # imports protobuf itself: install it without dependencies, then the ones it imports
  # (the `deploy` extra of pyproject.toml)
  pip install -q --no-deps mmdeploy==1.3.1
  pip install -q aenum multiprocess grpcio prettytable terminaltables
  python -c "import onnx, mmdeploy.apis; print('[setup] mmdeploy', mmdeploy.__version__, 'with onnx', onnx.__version__)"
fi
python -c "import mmprune, mmcv.ops, mmdet, mmseg; print('[setup] mmprune', mmprune.__version__, 'ready')"
echo "$want" > "$stamp"
