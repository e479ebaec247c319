#!/usr/bin/env bash
# Why does MTL-Reptile trail Transfer at the Table 1 quick budget? On VALIDATION classes only
# (6 held-out Omniglot background alphabets), every spec gets the quick profile's budget of
# 100,000 image passes; beta (the meta-learner's weight) and the inner steps (the meta-learner's
# share of each iteration's passes) are varied, Transfer and Reptile are the references.
# Adaptation as in the Table 1 harness. Rows -> benchmarks/results/tuning-omniglot-mtl-budget.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/tuning-omniglot-mtl-budget.jsonl}
ADAPT='[{"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support"}]'
COMMON='"filters": 32, "ways": 5, "shots": 5, "queries": 5, "meta_batch": 1, "inner_lr": 0.1, "transfer_lr": 0.2, "outer_lr": 1.0, "combine": "paper"'
SPECS=(
  "{\"algorithm\": \"transfer\", $COMMON}"
  "{\"algorithm\": \"mtl-reptile\", \"beta\": 0.5, \"inner_steps\": 5, $COMMON}"
  "{\"algorithm\": \"mtl-reptile\", \"beta\": 0.25, \"inner_steps\": 5, $COMMON}"
  "{\"algorithm\": \"mtl-reptile\", \"beta\": 0.75, \"inner_steps\": 5, $COMMON}"
  "{\"algorithm\": \"mtl-reptile\", \"beta\": 0.5, \"inner_steps\": 2, $COMMON}"
  "{\"algorithm\": \"mtl-reptile\", \"beta\": 0.25, \"inner_steps\": 2, $COMMON}"
  "{\"algorithm\": \"reptile\", \"inner_steps\": 5, $COMMON}"
  # FOMAML's outer step is a gradient step: outer_lr 0.1 (benchmarks/table1/profiles.py, RECIPES).
  "{\"algorithm\": \"mtl-fomaml\", \"beta\": 0.5, \"inner_steps\": 5, ${COMMON/\"outer_lr\": 1.0/\"outer_lr\": 0.1}}"
)
# Each spec is trained once (runs/tune/<hash>) and reused by the second cell.
PY=${PY:-.venv/bin/python}
$PY -m benchmarks.tune --dataset omniglot --out "$OUT" --budget-passes 100000 \
    --ways 5 --shots 1 --queries 15 --episodes 100 --adapt "$ADAPT" "${SPECS[@]}"
$PY -m benchmarks.tune --dataset omniglot --out "$OUT" --budget-passes 100000 \
    --ways 20 --shots 5 --queries 15 --episodes 40 --adapt "$ADAPT" "${SPECS[@]}"
# Reference outside the equal budget: MTL-Reptile with Transfer's 2000 iterations (6x its passes).
EQUAL_ITERATIONS="{\"algorithm\": \"mtl-reptile\", \"beta\": 0.5, \"inner_steps\": 5, \"iterations\": 2000, $COMMON}"
$PY -m benchmarks.tune --dataset omniglot --out "$OUT" \
    --ways 5 --shots 1 --queries 15 --episodes 100 --adapt "$ADAPT" "$EQUAL_ITERATIONS"
$PY -m benchmarks.tune --dataset omniglot --out "$OUT" \
    --ways 20 --shots 5 --queries 15 --episodes 40 --adapt "$ADAPT" "$EQUAL_ITERATIONS"
