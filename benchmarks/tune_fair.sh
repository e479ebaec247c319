#!/usr/bin/env bash
# Equal tuning effort for every Table 1 method (issue "Give MTL a fair fight"), on VALIDATION
# classes only: 6 held-out Omniglot background alphabets (benchmarks/tune.py's split), 200,000
# image passes per spec, Conv-4 with 32 filters, one torch thread per process.
#   benchmarks/tune_fair.sh transfer|heads|meta|maml|maml-lr|mtl|mtl2|mtl3|mtl-maml|mtl-beta|ways|stoploss [...]
#   (parts; run two side by side)
# Each spec is trained once (runs/tune/<hash>, resumable) and scored on 5-way 1-shot (100
# episodes; CELLS="5x1 20x1" adds 20-way 1-shot, 50 episodes), with fine-tuning (the harness's
# adaptation), with fine-tuning from the scaled prototype head, and with the prototype head alone
# (0 steps). `ways` scores ProtoNet trained at 5 and at 20 ways on 20-way 1-shot.
# Rows -> benchmarks/results/tuning-omniglot-fair.jsonl. DATASET=omniglot-vinyals tunes on the
# Vinyals split instead (base: its train split, validation: its val split), rows ->
# benchmarks/results/tuning-omniglot-vinyals-fair.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
DATASET=${DATASET:-omniglot}
DEFAULT_OUT=benchmarks/results/tuning-omniglot-fair.jsonl
[ "$DATASET" = omniglot ] || DEFAULT_OUT=benchmarks/results/tuning-$DATASET-fair.jsonl
OUT=${OUT:-$DEFAULT_OUT}
BUDGET=${BUDGET:-200000}
PY=${PY:-.venv/bin/python}
ADAPT='[{"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support"},
        {"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "prototype", "prototype_scale": 10, "bn_stats": "support"},
        {"steps": 0, "lr": 0.0, "head_init": "prototype", "bn_stats": "frozen"}]'
COMMON='"filters": 32, "ways": 5, "shots": 5, "queries": 5, "inner_steps": 5, "inner_lr": 0.1, "combine": "paper"'
# The supervised recipe of Chen et al. 2019 / Tian et al. 2020: mixed-class batches of 64 from all
# base images, SGD with momentum 0.9, weight decay 5e-4, cosine decay.
RECIPE='"transfer_batch": 64, "momentum": 0.9, "weight_decay": 0.0005, "transfer_schedule": "cosine"'
TRANSFER_LR=${TRANSFER_LR:-0.1}
TRANSFER_HEAD=${TRANSFER_HEAD:-standard}
MTL_TRANSFER="$RECIPE, \"transfer_lr\": $TRANSFER_LR, \"transfer_head\": \"$TRANSFER_HEAD\""

# Transfer at learning rate $1 with head init $2.
transfer_spec() {
  echo "{\"algorithm\": \"transfer\", $COMMON, $RECIPE, \"transfer_lr\": $1, \"transfer_head\": \"$2\"}"
}

# MTL-ProtoNet at beta $1, ProtoNet learning rate ${2:-0.001}, the transfer half at TRANSFER_LR.
mtl_protonet_spec() {
  echo "{\"algorithm\": \"mtl-protonet\", $COMMON, \"meta_batch\": 1, \"protonet_lr\": ${2:-0.001}, \"beta\": $1, \"meta_schedule\": \"linear\", $MTL_TRANSFER}"
}

# ProtoNet with $1-way training episodes at learning rate $2.
protonet_spec() {
  echo "{\"algorithm\": \"protonet\", ${COMMON/\"ways\": 5/\"ways\": $1}, \"meta_batch\": 1, \"protonet_lr\": $2, \"meta_schedule\": \"linear\"}"
}

# Second-order MAML (one inner step) at outer learning rate $1.
maml_spec() {
  echo "{\"algorithm\": \"maml\", ${COMMON/\"inner_steps\": 5/\"inner_steps\": 1}, \"meta_batch\": 4, \"outer_lr\": $1, \"meta_schedule\": \"linear\"}"
}

# MTL-Reptile or MTL-FOMAML ($1) at beta $2, its meta half as its baseline won.
mtl_meta_spec() {
  local meta="\"meta_batch\": 1, \"outer_lr\": 1.0"
  [ "$1" = mtl-fomaml ] && meta="\"meta_batch\": 4, \"outer_lr\": 0.1"
  echo "{\"algorithm\": \"$1\", $COMMON, $meta, \"beta\": $2, \"meta_schedule\": \"linear\", $MTL_TRANSFER}"
}

part_specs() {
  case $1 in
    transfer)
      for lr in 0.05 0.1; do transfer_spec $lr standard; done ;;
    heads)
      for head in cosine zeros; do transfer_spec 0.1 $head; done ;;
    meta)
      for lr in 0.001 0.003; do protonet_spec 5 $lr; done
      # ProtoNet trained at 20 ways (Snell et al. train with more ways than they test).
      protonet_spec 20 0.001
      # Reptile as published: the outer step annealed linearly to 0.
      for mb in 1 5; do
        echo "{\"algorithm\": \"reptile\", $COMMON, \"meta_batch\": $mb, \"outer_lr\": 1.0, \"meta_schedule\": \"linear\"}"
      done ;;
    maml)
      for lr in 0.1 0.3; do
        echo "{\"algorithm\": \"fomaml\", $COMMON, \"meta_batch\": 4, \"outer_lr\": $lr, \"meta_schedule\": \"linear\"}"
      done
      maml_spec 0.1 ;;
    mtl)
      for beta in 0.5 0.25 0.75; do mtl_protonet_spec $beta; done
      mtl_meta_spec mtl-reptile 0.5
      mtl_meta_spec mtl-fomaml 0.5 ;;
    mtl3)
      # The other MTL variants, each with the beta sweep MTL-ProtoNet had (their meta halves as
      # their baselines won in `meta` and `maml`).
      for variant in mtl-reptile mtl-fomaml; do
        for beta in 0.25 0.5 0.75; do mtl_meta_spec $variant $beta; done
      done ;;
    maml-lr)
      # Second-order MAML's own outer-lr sweep (its single spec of the maml part was stopped
      # once; MTL-MAML was swept at the 0.1 it uses).
      for lr in 0.1 0.3; do maml_spec $lr; done ;;
    mtl-beta)
      # MTL-ProtoNet's beta alone (with Transfer at its chosen lr beside it): the sweep for a
      # new split, e.g. DATASET=omniglot-vinyals, whose 4,112 base classes may want another beta.
      transfer_spec "$TRANSFER_LR" "$TRANSFER_HEAD"
      for beta in 0.25 0.5 0.75; do mtl_protonet_spec $beta; done ;;
    mtl-maml)
      for beta in 0.5 0.75; do
        echo "{\"algorithm\": \"mtl-maml\", ${COMMON/\"inner_steps\": 5/\"inner_steps\": 1}, \"meta_batch\": 4, \"outer_lr\": 0.1, \"beta\": $beta, \"meta_schedule\": \"linear\", $MTL_TRANSFER}"
      done ;;
    mtl2)
      # ProtoNet itself did better at protonet_lr 0.003 (20-way 1-shot 78.8 vs 75.0): the same for
      # MTL-ProtoNet at the beta that won at 0.001.
      mtl_protonet_spec 0.75 0.003 ;;
    ways)
      protonet_spec 5 0.001
      protonet_spec 20 0.001 ;;
    *) echo "unknown part $1 (transfer, heads, meta, maml, maml-lr, mtl, mtl2, mtl3, mtl-maml, mtl-beta, ways, stoploss)" >&2; exit 2 ;;
  esac
}

# Evaluation cost: does ending the min_epochs steps once the support set is fitted (stop_loss)
# lose accuracy? Transfer's model (lr TRANSFER_LR), 20-way 5-shot and 5-way 15-shot.
stoploss() {
  local spec
  spec=$(transfer_spec "$TRANSFER_LR" standard)
  local adapt='[{"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support"},
                {"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support", "stop_loss": 0.01},
                {"steps": 30, "lr": 0.1, "batch_size": 64, "min_epochs": 20, "head_init": "zeros", "bn_stats": "support", "stop_loss": 0.05}]'
  $PY -m benchmarks.tune --dataset "$DATASET" --out "$OUT" --budget-passes "$BUDGET" \
      --ways 20 --shots 5 --queries 15 --episodes 40 --adapt "$adapt" "$spec"
  $PY -m benchmarks.tune --dataset "$DATASET" --out "$OUT" --budget-passes "$BUDGET" \
      --ways 5 --shots 15 --queries 5 --episodes 40 --adapt "$adapt" "$spec"
}

for part in "$@"; do
  if [ "$part" = stoploss ]; then stoploss; continue; fi
  mapfile -t SPECS < <(part_specs "$part")
  cells=${CELLS:-5x1}
  [ "$part" = ways ] && cells=20x1
  for cell in $cells; do
    ways=${cell%x*}
    episodes=$([ "$ways" = 5 ] && echo 100 || echo 50)
    $PY -m benchmarks.tune --dataset "$DATASET" --out "$OUT" --budget-passes "$BUDGET" \
        --ways "$ways" --shots "${cell#*x}" --queries 15 --episodes "$episodes" --adapt "$ADAPT" "${SPECS[@]}"
  done
done
