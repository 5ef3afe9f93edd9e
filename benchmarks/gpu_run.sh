#!/usr/bin/env bash
# The GPU measurements recorded in benchmarks/RESULTS.md, as one script for a lent GPU machine
# whose Python has torch but not diffusers: wheels in .whl/ (diffusers, importlib_metadata) and the
# reference folders copied to .bench_data/ travel with the working tree.
#   bash benchmarks/gpu_run.sh OUTDIR        # the open measurements (about 6 minutes: one device call)
#   bash benchmarks/gpu_run.sh OUTDIR all    # and the measurements already recorded
set -u
out=${1:-gpu-results}
what=${2:-open}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$out/gpu.txt"
run() { echo "== $*"; timeout "$1" "${@:2}" 2>&1 | grep -v "kept in float32"; }
# Open (not measured on a GPU yet), most important first; each line writes its JSON after every size:
# tiles at the two finest levels (the engine since the H200 session) at 720p, the default plan
# (running statistics) and a two-pass encoder, tiles in lockstep and one at a time, against the
# full pass and the released tiling, 17 and 33 frames.
run 240 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_full sd3_full \
  --dtype bfloat16 --sizes 17x720x1280 33x720x1280 --chunks 4 1 --tile 360 --tile-order lockstep sequential \
  --ours ours ours-two_pass-encoder --repeats 2 --out "$out/full_bf16_720p_hybrid_tiles.json"
run 120 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models src/cvvae/assets/model sd21_tiny \
  --sizes 17x720x1280 --chunks 4 1 --tile 360 --ours ours ours-two_pass-encoder --repeats 2 \
  --out "$out/trained_and_reference_720p_hybrid_tiles.json"
[ "$what" = all ] || exit 0
# Recorded in benchmarks/RESULTS.md (H200): torch.compile of the full pass.
run 150 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_full --compile \
  --dtype bfloat16 --sizes 17x720x1280 --ours --no-reference --repeats 2 --out "$out/sd21_full_bf16_compile.json"
# The earlier H100 session's measurements:
run 150 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_tiny sd3_tiny \
  --sizes 17x256x256 33x256x256 65x256x256 129x256x256 17x720x1280 33x720x1280 --repeats 3 --out "$out/bench_tiny.json"
run 200 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_full \
  --sizes 17x256x256 33x512x512 17x720x1280 --repeats 2 --out "$out/bench_full.json"
run 90 python3 benchmarks/bench_inference.py --device cuda --shared .bench_data --models sd21_full --dtype bfloat16 \
  --sizes 17x720x1280 --repeats 2 --out "$out/bench_full_bf16.json"
run 60 python3 benchmarks/bench_precision.py --device cuda --shared .bench_data --out "$out/precision.json"
