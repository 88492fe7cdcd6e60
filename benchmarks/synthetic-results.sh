#!/usr/bin/env bash
# Regenerates results/synthetic/: the default grid (every method, three seeds, each
# multimodal method's own unimodal ceilings, every stage to a plateau), then the tables,
# figures and report from its rows.
#   bash benchmarks/synthetic-results.sh [RUN_FOLDER]   (default runs/synthetic; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/synthetic}"
out=results/synthetic
rm -rf "$out"
mkdir -p "$out"
imerbench run --out "$run"
cp "$run/results.csv" "$out/results.csv"
imerbench table "$run" > "$out/leaderboard.md"
imerbench table "$run" --selection test-oracle > "$out/leaderboard-test-oracle.md"
imerbench table "$run" --protocols > "$out/protocols.md"
imerbench table "$run" --convergence > "$out/convergence.md"
imerbench plot "$run" --out "$out/figures"
imerbench report "$run" --out "$out/report.html"
