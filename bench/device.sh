#!/usr/bin/env bash
# One call on a GPU machine (torch with CUDA + Triton, no internet): install the wheels copied beside this
# script, run the CUDA tests and bench/train.py --device cuda at the issue-30 target shapes, write JSON.
#
#   bash bench/device.sh OUT_DIR [WHEEL_DIR]      # WHEEL_DIR defaults to .gpu/whl (see docs/gpu.md)
#
# Every stage has its own time limit (the whole call stays under 8 minutes); a failed stage is recorded in
# OUT_DIR/summary.json and the next one still runs.  Exit status: 0 when every stage passed.
set -u
OUT=${1:?usage: bash bench/device.sh OUT_DIR [WHEEL_DIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
WHEELS=${2:-$ROOT/.gpu/whl}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SITE=$(mktemp -d)
PY=${PYTHON:-python3}  # the interpreter with torch (CUDA)
START=$(date +%s)
STATUS=()

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  STATUS+=("\"$name\": {\"exit\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}")
  tail -n 25 "$OUT/$name.log"
  return 0
}

if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
  stage install 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE:$ROOT/src"
cd "$ROOT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" > "$OUT/torch.txt" 2>&1

stage tests 120 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_syncs.py tests/test_distributed.py \
  -k "cuda or device" --junitxml "$OUT/tests.xml"
stage bench_d576 120 "$PY" bench/train.py --device cuda --d 576 --widths 4608 --k 32 --rank 24 --batch 4096 \
  --steps 15 --parts step,e2e --out "$OUT/bench_d576.json"
stage bench_d2304 90 "$PY" bench/train.py --device cuda --d 2304 --widths 65536 --k 64 --rank 24 --batch 4096 \
  --steps 15 --parts step --out "$OUT/bench_d2304.json"
stage bench_lockstep 60 "$PY" bench/train.py --device cuda --d 640 --widths 16384 --k 64 --rank 32 --batch 4096 \
  --steps 10 --parts lockstep --out "$OUT/bench_lockstep.json"

( IFS=,; echo "{\"seconds\": $(( $(date +%s) - START )), \"stages\": {${STATUS[*]}}}" ) > "$OUT/summary.json"
cat "$OUT/summary.json"
grep -q '"exit": [1-9]' "$OUT/summary.json" && exit 1 || exit 0
