#!/usr/bin/env bash
# The GPU measurements recorded in docs/performance.md, as one script for a lent GPU machine
# whose Python has torch but not diffusers: wheels in .whl/ (diffusers, importlib_metadata) and the
# reference folders copied to .bench_data/ travel with the working tree.
#   bash benchmarks/gpu_run.sh OUTDIR
set -u
out=${1:-gpu-results}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$out/gpu.txt"
run() { echo "== $*"; timeout "$1" "${@:2}" 2>&1 | grep -v "kept in float32"; }
run 150 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_tiny sd3_tiny \
  --sizes 17x256x256 33x256x256 65x256x256 129x256x256 17x720x1280 33x720x1280 --repeats 3 --out "$out/bench_tiny.json"
run 200 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_full \
  --sizes 17x256x256 33x512x512 17x720x1280 --repeats 2 --out "$out/bench_full.json"
run 90 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_full --dtype bfloat16 \
  --sizes 17x720x1280 --repeats 2 --out "$out/bench_full_bf16.json"
run 60 python3 benchmarks/bench_precision.py --device cuda --shared .bench_data --out "$out/precision.json"
