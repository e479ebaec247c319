#!/usr/bin/env bash
# Follow-ups to investigate_mtl_budget.sh, on the same VALIDATION classes (6 held-out Omniglot
# background alphabets), same 100,000-pass budget, adaptation and episodes: the two things it
# left untried.
#   authors: the authors' combination (theta + 0.5 * ((1 - beta) * eps * meta + beta * transfer);
#            here beta weights the transfer term) -> tuning-omniglot-mtl-more.jsonl
#   wide:    a wider backbone (Conv-4 with 64 filters instead of 32), Transfer against MTL-Reptile
#            -> tuning-omniglot-mtl-wide.jsonl
# Usage: benchmarks/investigate_mtl_more.sh [authors] [wide]   (both when none is named)
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
ADAPT='[{"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support"}]'
COMMON='"ways": 5, "shots": 5, "queries": 5, "meta_batch": 1, "inner_lr": 0.1, "transfer_lr": 0.2, "outer_lr": 1.0'
PY=${PY:-.venv/bin/python}

# Every spec on 5-way 1-shot (100 episodes) and 20-way 5-shot (40); each spec is trained once.
evaluate_specs() {
  local out=$1; shift
  for cell in "--ways 5 --shots 1 --queries 15 --episodes 100" "--ways 20 --shots 5 --queries 15 --episodes 40"; do
    # shellcheck disable=SC2086
    $PY -m benchmarks.tune --dataset omniglot --out "$out" --budget-passes 100000 $cell --adapt "$ADAPT" "$@"
  done
}

for part in "${@:-authors wide}"; do
  for p in $part; do
    case $p in
      authors) evaluate_specs "$RESULTS/tuning-omniglot-mtl-more.jsonl" \
        "{\"algorithm\": \"mtl-reptile\", \"filters\": 32, \"beta\": 0.5, \"inner_steps\": 5, \"combine\": \"authors\", $COMMON}" \
        "{\"algorithm\": \"mtl-reptile\", \"filters\": 32, \"beta\": 0.75, \"inner_steps\": 5, \"combine\": \"authors\", $COMMON}" ;;
      wide) evaluate_specs "$RESULTS/tuning-omniglot-mtl-wide.jsonl" \
        "{\"algorithm\": \"transfer\", \"filters\": 64, \"combine\": \"paper\", $COMMON}" \
        "{\"algorithm\": \"mtl-reptile\", \"filters\": 64, \"beta\": 0.5, \"inner_steps\": 5, \"combine\": \"paper\", $COMMON}" ;;
      *) echo "error: unknown part '$p' (authors, wide)" >&2; exit 2 ;;
    esac
  done
done
