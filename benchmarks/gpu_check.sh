#!/usr/bin/env bash
# The speed check for a GPU machine (H100/H200): benchmarks/speed.py at the published settings.
#   1. comp-ref vs the released ComP on the same batches (MOSI and IEMOCAP-4 shapes);
#   2. one comp-ref cell alone: MOSI at the published 300 epochs, IEMOCAP-4 at 20;
#   3. a grid of 8 comp-ref cells, one at a time and 4 at once (GPU utilization, peak memory);
#   4. every other method, one short cell alone per shape (its seconds per epoch);
#   5. the paper grid (benchmarks/grids/paper.toml) extrapolated from 2-4.
# About 8 minutes on one H100. Output: $OUT/speed-*.txt, $OUT/speed-record.jsonl and
# $OUT/paper-grid.txt.
#
# It reads two gitignored folders that travel with the working tree (name them in `carry`):
#   mkdir -p .device/labels && cp /work/shared/data/gcnet-labels/*.pkl .device/labels/
#   mkdir -p .device/comp-released && git --git-dir=/work/.mirror/WenjueHE+2026-AAAI-ComP/repo \
#       archive HEAD | tar -x -C .device/comp-released
# Without a GPU it runs a reduced version (a few epochs, 2 cells, 1 repeat), to check the steps.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$(mktemp -d)}
LABELS=${LABELS:-.device/labels}
RELEASED=${RELEASED:-.device/comp-released}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ! python3 -c "import imerbench" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation -e .
fi
for needed in "$LABELS/CMUMOSI_features_raw_2way.pkl" "$RELEASED/ComP/model.py"; do
    [ -f "$needed" ] || { echo "missing $needed (see the top of $0)" >&2; exit 2; }
done

if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    mosi=(--epochs 300 --grid-cells 8 --grid-epochs 30 --jobs 4 --repeats 5)
    mosi_others=(--epochs 30)
    iemocap=(--epochs 20 --grid-cells 8 --grid-epochs 10 --jobs 4 --repeats 3)
    iemocap_others=(--epochs 5)
    limit=(240 150 200 150)
else
    echo "no GPU: the reduced version"
    mosi=(--epochs 2 --grid-cells 2 --jobs 2 --repeats 1)
    mosi_others=(--epochs 2)
    iemocap=(--epochs 1 --grid-cells 0 --repeats 1 --train-batches 2)
    iemocap_others=(--epochs 1)
    limit=(3000 3000 3000 3000)
fi

record="$OUT/speed-record.jsonl"
rm -f "$record"
common=(--labels "$LABELS" --work "$WORK" --record "$record")
others=(--methods all-but:comp-ref --grid-cells 0)
status=0
step() {  # step LIMIT OUTPUT ARGS...: one speed.py run, its output kept, its failure counted
    local limit=$1 output=$2
    shift 2
    timeout "$limit" python3 benchmarks/speed.py "${common[@]}" "$@" 2>&1 | tee "$OUT/$output" \
        || status=$?
}
step "${limit[0]}" speed-mosi.txt --shape mosi --released "$RELEASED" --methods comp-ref "${mosi[@]}"
step "${limit[1]}" speed-mosi-others.txt --shape mosi "${others[@]}" "${mosi_others[@]}"
step "${limit[2]}" speed-iemocap4.txt --shape iemocap4 --released "$RELEASED" --methods comp-ref \
    "${iemocap[@]}"
step "${limit[3]}" speed-iemocap4-others.txt --shape iemocap4 "${others[@]}" "${iemocap_others[@]}"
python3 benchmarks/speed.py --labels "$LABELS" --extrapolate "$record" 2>&1 \
    | tee "$OUT/paper-grid.txt" || status=$?
exit "$status"
