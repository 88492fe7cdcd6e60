#!/usr/bin/env bash
# The speed check for a GPU machine (H100/H200): benchmarks/speed.py at the published settings.
#   1. comp-ref vs the released ComP on the same batches (MOSI and IEMOCAP-4 shapes);
#   2. one comp-ref cell alone: MOSI at the published 300 epochs, IEMOCAP-4 at 20;
#   3. a grid of comp-ref cells (16 on MOSI, 8 on IEMOCAP-4), one at a time, 4 at once and as
#      one stack: cells per hour, GPU utilization, peak memory, the stacked rows compared;
#   4. every other method, one short cell alone per shape (its seconds per epoch);
#   5. every method on a MOSEI-sized corpus (drawn labels: MOSEI's are not on this disk),
#      a few epochs, and a grid of 4 comp-ref cells both ways;
#   6. the paper grid (built in: `imerbench grid show paper`) extrapolated from 2-5.
# The steps run in that order within BUDGET seconds (on a GPU 540 by default: one device
# call is at most 600 s); a step that would pass the budget is cut short (what it measured is
# kept) and the ones after it are skipped. Output: $OUT/speed-*.txt, $OUT/speed-record.jsonl
# and $OUT/paper-grid.txt.
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
    mosi=(--epochs 300 --grid-cells 16 --grid-epochs 20 --jobs 4 --repeats 5)
    mosi_others=(--epochs 30)
    iemocap=(--epochs 20 --grid-cells 8 --grid-epochs 10 --jobs 4 --repeats 3)
    iemocap_others=(--epochs 5)
    mosei=(--epochs 3 --grid-cells 4 --grid-epochs 2 --jobs 4 --grid-method comp-ref)
    limit=(240 120 160 120 180)
    BUDGET=${BUDGET:-540}
else
    echo "no GPU: the reduced version"
    mosi=(--epochs 2 --grid-cells 2 --jobs 2 --repeats 1)
    mosi_others=(--epochs 2)
    iemocap=(--epochs 1 --grid-cells 0 --repeats 1 --train-batches 2)
    iemocap_others=(--epochs 1)
    mosei=(--methods comp-ref --epochs 1 --grid-cells 0)
    limit=(3000 3000 3000 3000 3000)
    BUDGET=${BUDGET:-7200}
fi

start=$SECONDS
record="$OUT/speed-record.jsonl"
rm -f "$record"
common=(--labels "$LABELS" --work "$WORK" --record "$record")
others=(--methods all-but:comp-ref --grid-cells 0)
status=0
step() {  # step LIMIT OUTPUT ARGS...: one speed.py run, its output kept, its failure counted
    local limit=$1 output=$2
    local left=$((BUDGET - (SECONDS - start) - 10))  # 10 s kept for the extrapolation
    shift 2
    if ((left < 20)); then
        echo "skipped $output: the budget of $BUDGET s is spent" | tee "$OUT/$output"
        status=1
        return
    fi
    ((limit <= left)) || limit=$left
    timeout "$limit" python3 benchmarks/speed.py "${common[@]}" "$@" 2>&1 | tee "$OUT/$output" \
        || status=$?
}
step "${limit[0]}" speed-mosi.txt --shape mosi --released "$RELEASED" --methods comp-ref "${mosi[@]}"
step "${limit[1]}" speed-mosi-others.txt --shape mosi "${others[@]}" "${mosi_others[@]}"
step "${limit[2]}" speed-iemocap4.txt --shape iemocap4 --released "$RELEASED" --methods comp-ref \
    "${iemocap[@]}"
step "${limit[3]}" speed-iemocap4-others.txt --shape iemocap4 "${others[@]}" "${iemocap_others[@]}"
step "${limit[4]}" speed-mosei.txt --shape mosei --methods all "${mosei[@]}"
python3 benchmarks/speed.py --labels "$LABELS" --extrapolate "$record" 2>&1 \
    | tee "$OUT/paper-grid.txt" || status=$?
exit "$status"
