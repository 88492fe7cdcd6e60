#!/usr/bin/env bash
# Regenerates results/synthetic/: the default grid plus each multimodal method's unimodal
# ceilings on the synthetic corpus, then the tables, figures and report from their rows.
#   bash benchmarks/synthetic-results.sh [RUN_FOLDER]   (default runs/synthetic; resumable)
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/synthetic}"
out=results/synthetic
mkdir -p "$out"
imerbench run --out "$run"
imerbench run benchmarks/grids/synthetic-ceilings.toml --out "$run"
cp "$run/results.csv" "$out/results.csv"
imerbench table "$run" --paper > "$out/leaderboard.md"
imerbench table "$run" --protocols > "$out/protocols.md"
imerbench plot "$run" --out "$out/figures"
imerbench report "$run" --out "$out/report.html"
