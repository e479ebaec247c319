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
  # MTL-ProtoNet trained as Snell et al. train ProtoNet on Omniglot (20 ways per training
  # episode, the background characters turned by 90/180/270 degrees as classes of their own), on
  # the background alphabets minus the 6 validation alphabets. beta swept on those alphabets at
  # 2M passes (0.5 / 0.75 / 0.9, one process each, about 40 min side by side on 2 cores), the
  # winner entered in the builtin-mtl profile, then trained at the full 6M passes (about an hour
  # of one core).
  "${PY:-.venv/bin/python}" -m benchmarks.builtin_sweep --only 0.5 &
  "${PY:-.venv/bin/python}" -m benchmarks.builtin_sweep --only 0.75 &
  "${PY:-.venv/bin/python}" -m benchmarks.builtin_sweep --only 0.9 &
  wait
  "$MTL" bench table1 --dataset omniglot --profile builtin-mtl --methods mtl-protonet \
    --out benchmarks/results/table1-omniglot-builtin-mtl
  "${PY:-.venv/bin/python}" -m benchmarks.ship_builtin --dataset omniglot --method mtl-protonet \
    --name handwriting-mtl --report benchmarks/results/table1-omniglot-builtin-mtl \
    --suits "handwritten characters and symbols, glyphs and simple line drawings (read as grayscale, resized to 28x28); trained on 804 Omniglot characters of 24 alphabets, each also turned by 90, 180 and 270 degrees"
  # Its default adaptation, chosen on the validation alphabets over 5/20-way x 1/5/15-shot among
  # Table 1's three (the 0-step prototype head led the fine-tuned ones by 3.2-3.5 points in the
  # sweep at beta 0.9; the slower variants of choose_adaptation are left out for time).
  "${PY:-.venv/bin/python}" -m benchmarks.choose_adaptation --model app/builtin_models/handwriting-mtl \
    --dataset omniglot --episodes 40 --candidates prototype-0-steps,zeros,prototype --apply
  # Against the ProtoNet in service (app/builtin_models/handwriting; its recipe: the builtin and
  # builtin-wide profiles, then choose_adaptation as above over 7 candidates), each with its own
  # default adaptation, on the same validation episodes. The rule (issue 27): the MTL model
  # replaces it if no cell is below -0.5 points; else both stay, the better one as handwriting.
  "${PY:-.venv/bin/python}" -m benchmarks.compare_builtin --a app/builtin_models/handwriting \
    --b app/builtin_models/handwriting-mtl --dataset omniglot --profile builtin --ways 5,20 \
    --shots 1,5,15 --episodes 100 --out benchmarks/results/handwriting-mtl-vs-protonet.json --record
  # Unseen alphabets, 600 episodes, the default adaptation (the goals: 97.5 / 92.5 at 5-/20-way 1-shot).
  "$MTL" evaluate --checkpoint app/builtin_models/handwriting-mtl \
    --dataset "$DATA/omniglot/images_evaluation.npz" --ways 5,20 --shots 1,15 --episodes 600 \
    --seed 2019 --device cpu --record unseen_classes_default_adaptation
fi

if [[ "$which" == natural || "$which" == all ]]; then
  # The fair Table 1 run on miniImageNet-lite (16 of the 64 train classes held out for the
  # training curves and the choice), the method best on those validation classes shipped, and its
  # adaptation chosen there at 5-way 1/5/20-shot and checked at 16-way 1/5-shot (16 held-out
  # classes allow no 20-way task). MTL-ProtoNet and ProtoNet
  # tied on the deciding validation cell at the last run (the card says why MTL-ProtoNet was taken);
  # NAT_METHOD=best takes whichever leads on a rerun.
  "$MTL" bench table1 --dataset miniimagenet-lite --profile fair \
    --methods "${NAT_METHODS:-transfer,protonet,mtl-protonet}" \
    --out "${NAT_REPORT:-benchmarks/results/table1-miniimagenet-lite-fair}"
  "${PY:-.venv/bin/python}" -m benchmarks.ship_builtin --report "${NAT_REPORT:-benchmarks/results/table1-miniimagenet-lite-fair}" \
    --dataset miniimagenet-lite --method "${NAT_METHOD:-mtl-protonet}" --name natural \
    --suits "natural photos of objects and animals (read as RGB, resized to 84x84); trained on 48 ImageNet classes (miniImageNet-lite: 120 photos each), so expect far less on other kinds of images"
  "${PY:-.venv/bin/python}" -m benchmarks.choose_adaptation --model app/builtin_models/natural \
    --dataset miniimagenet-lite --ways 5 --shots 1,5,20 --episodes "${NAT_ADAPT_EPISODES:-30}" \
    --candidates prototype-0-steps,zeros,prototype,prototype-augment --apply
  # The same candidates at 16 ways (every held-out class; 20-way tasks cannot be drawn from 16):
  # a check of the choice above, recorded in docs/results.md and the card, not applied.
  "${PY:-.venv/bin/python}" -m benchmarks.choose_adaptation --model app/builtin_models/natural \
    --dataset miniimagenet-lite --ways 16 --shots 1,5 --episodes "${NAT_ADAPT_EPISODES:-30}" \
    --candidates prototype-0-steps,zeros,prototype,prototype-augment \
    --rows benchmarks/results/adaptation-natural-16way.jsonl
fi
