#!/usr/bin/env bash
# Regenerates results/synthetic-balance/: the built-in `balance` grid (every balance
# strategy on early fusion, late fusion and MoMKE beside each base, MR 0 and 0.5, three
# seeds, each base's own unimodal ceilings), then its balance table, leaderboard and report.
#   bash benchmarks/balance-results.sh [RUN_FOLDER]   (default runs/balance; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/balance}"
out=results/synthetic-balance
rm -rf "$out"
mkdir -p "$out"
imerbench run balance --out "$run"
cp "$run/results.csv" "$out/results.csv"
imerbench table "$run" --balance > "$out/balance.md"
imerbench table "$run" --balance --format csv > "$out/balance.csv"
imerbench table "$run" > "$out/leaderboard.md"
imerbench table "$run" --convergence > "$out/convergence.md"
imerbench report "$run" --out "$out/report.html"
