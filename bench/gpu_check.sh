#!/usr/bin/env bash
# The checks a session runs on a lent CUDA machine, in one go (nothing there can be downloaded):
# the CUDA tests, `gradloop run` of the quickstart on `device: auto`, and the throughput and
# tracking benches on cuda beside the hand-written loop. Wheels of the packages the machine's
# image lacks (mlflow, pydantic, ...) travel in .whl/ (git-ignored locally), made here with
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#     -d .whl mlflow==3.17.2 "pydantic>=2.6,<3" orjson sqlalchemy alembic sse-starlette
# minus the packages the GPU image already has (about 35 MB remain). Logs go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# The project itself too, so that its entry points (the lion plugin) are registered.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . >"$OUT/install.log" 2>&1 || echo "project install failed (see install.log)"
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1 GIT_PYTHON_REFRESH=quiet
export MLFLOW_TRACKING_URI="sqlite:///$PWD/gpu-mlflow.db"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

step() { local name=$1 limit=$2; shift 2; echo "=== $name"; local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; local rc=$?; echo "rc=$rc in $((SECONDS - t0)) s"; tail -n "${TAIL:-25}" "$OUT/$name.log"; }

TAIL=15 step tests 240 python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/gpu/test_cuda.py tests/core/test_config.py tests/core/test_checkpoint_resume.py
TAIL=12 step quickstart 60 python3 -m gradloop.cli.main run configs/quickstart.yaml
TAIL=14 step throughput 120 python3 bench/throughput.py --device cuda --repeats 3 --epochs 5 --no-startup
TAIL=8 step tracking 150 python3 bench/tracking.py --pairs 3 --only mlp,close
