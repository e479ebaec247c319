#!/usr/bin/env bash
# Trains the two built-in base models the service registers at first start, evaluates each on
# unseen classes and records the numbers in its card (model.json: metrics.unseen_classes).
# CPU budgets are stated below; on a GPU raise --iterations.
#   scripts/train_builtin_models.sh [handwriting|natural|all]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${MTL_DATA_ROOT:-../shared/data}"
MTL="${MTL:-.venv/bin/mtl}"
which="${1:-all}"

if [[ "$which" == handwriting || "$which" == all ]]; then
  # The fair Table 1 run on Omniglot trains every method with its validated settings on the
  # background alphabets minus 6 validation alphabets (training curves on those), scores them on
  # the evaluation alphabets, and the method best on the validation alphabets becomes the model
  # (ProtoNet at the last run). Side by side on several cores: see docs/results.md.
  "$MTL" bench table1 --dataset omniglot --profile fair --methods "${HW_METHODS:-transfer,protonet,mtl-protonet,reptile,fomaml}" \
    --out "${HW_REPORT:-benchmarks/results/table1-omniglot-fair}"
  "${PY:-.venv/bin/python}" -m benchmarks.ship_builtin --report "${HW_REPORT:-benchmarks/results/table1-omniglot-fair}" \
    --dataset omniglot --profile fair --method best --name handwriting \
    --suits "handwritten characters and symbols, glyphs and simple line drawings (read as grayscale, resized to 28x28); trained on 804 Omniglot characters of 24 alphabets"
fi

if [[ "$which" == natural || "$which" == all ]]; then
  out=app/builtin_models/natural
  "$MTL" pretrain --dataset "$DATA/miniimagenet-lite/train" --algorithm mtl-reptile \
    --image-size 84 --channels 3 --filters 32 --augment \
    --iterations "${NAT_ITERATIONS:-500}" --device "${DEVICE:-auto}" --out "$out"
  # Unseen classes: val + test (36 classes), as in the paper.
  "$MTL" evaluate --checkpoint "$out" --dataset "$DATA/miniimagenet-lite/val" \
    --dataset "$DATA/miniimagenet-lite/test" --ways 5 --shots 1,5 \
    --episodes "${EPISODES_NATURAL:-50}" --record unseen_classes
fi
