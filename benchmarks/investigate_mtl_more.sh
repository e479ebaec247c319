#!/usr/bin/env bash
# Follow-up to investigate_mtl_budget.sh, on the same VALIDATION classes (6 held-out Omniglot
# background alphabets), same 100,000-pass budget, adaptation and episodes: one thing it left
# untried, the authors' combination (theta + 0.5 * ((1 - beta) * eps * meta + beta * transfer);
# here beta weights the transfer term). The wider backbone: investigate_mtl_wide.sh.
# Rows -> benchmarks/results/tuning-omniglot-mtl-more.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/tuning-omniglot-mtl-more.jsonl}
ADAPT='[{"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support"}]'
COMMON='"ways": 5, "shots": 5, "queries": 5, "meta_batch": 1, "inner_lr": 0.1, "transfer_lr": 0.2, "outer_lr": 1.0'
SPECS=(
  "{\"algorithm\": \"mtl-reptile\", \"filters\": 32, \"beta\": 0.5, \"inner_steps\": 5, \"combine\": \"authors\", $COMMON}"
  "{\"algorithm\": \"mtl-reptile\", \"filters\": 32, \"beta\": 0.75, \"inner_steps\": 5, \"combine\": \"authors\", $COMMON}"
)
PY=${PY:-.venv/bin/python}
for CELL in "--ways 5 --shots 1 --queries 15 --episodes 100" "--ways 20 --shots 5 --queries 15 --episodes 40"; do
  # shellcheck disable=SC2086
  $PY -m benchmarks.tune --dataset omniglot --out "$OUT" --budget-passes 100000 $CELL --adapt "$ADAPT" "${SPECS[@]}"
done
