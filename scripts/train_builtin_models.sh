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
  out=app/builtin_models/handwriting
  "$MTL" pretrain --dataset "$DATA/omniglot/images_background.npz" --algorithm mtl-reptile \
    --image-size 28 --channels 1 --filters 32 --iterations "${HW_ITERATIONS:-3000}" \
    --device "${DEVICE:-auto}" --out "$out"
  # 20-way 5-shot costs ~4 s an episode on a busy CPU: fewer episodes for the 5-shot cells.
  "$MTL" evaluate --checkpoint "$out" --dataset "$DATA/omniglot/images_evaluation.npz" \
    --ways 5,20 --shots 1 --episodes "${EPISODES:-300}" --record unseen_classes_1shot
  "$MTL" evaluate --checkpoint "$out" --dataset "$DATA/omniglot/images_evaluation.npz" \
    --ways 5,20 --shots 5 --episodes "${EPISODES_5SHOT:-100}" --record unseen_classes_5shot
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
