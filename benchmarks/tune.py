"""Hyperparameter selection on VALIDATION classes only (never the unseen test classes).

The validation classes are benchmarks.splits' (held out of the base classes; the same ones
Table 1's validated profiles use): `--val-alphabets` Omniglot background alphabets, the Vinyals
split's val split, or `--val-classes` of miniImageNet-lite's train classes (seed 0).

Each spec is a JSON object of PretrainConfig fields; every spec is evaluated with every
adaptation setting in --adapt (JSON list of AdaptConfig dicts) on the same seeded episodes.
Rows are appended to --out as JSON lines.

    python -m benchmarks.tune --dataset omniglot --out benchmarks/results/tuning-omniglot.jsonl \
        '{"algorithm": "mtl-reptile", "iterations": 150, "filters": 32}' ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from benchmarks.splits import DATASETS, base_and_validation
from models.adaptation import evaluate
from models.checkpoint import load_base_model
from models.config import AdaptConfig, PretrainConfig
from models.errors import ConfigError
from models.training import pretrain

DEFAULT_ADAPT = [
    {"steps": 0, "lr": 0.0, "head_init": "prototype"},
    {"steps": 20, "lr": 0.01, "head_init": "prototype", "bn_stats": "frozen"},
    {"steps": 20, "lr": 0.01, "head_init": "prototype", "bn_stats": "support"},
    {"steps": 50, "lr": 0.05, "head_init": "zeros", "bn_stats": "frozen"},
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS,
                   default="omniglot")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--val-alphabets", type=int, default=6,
                   help="omniglot: background alphabets held out as validation classes")
    p.add_argument("--val-classes", type=int, default=16,
                   help="miniimagenet-lite: train classes held out as validation classes")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--adapt", type=json.loads, default=DEFAULT_ADAPT)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget-passes", type=int, default=0,
                   help="specs without 'iterations' get this many image passes' worth of iterations")
    p.add_argument("specs", nargs="+", type=json.loads)
    args = p.parse_args()
    held_out = {"omniglot": args.val_alphabets, "miniimagenet-lite": args.val_classes}.get(args.dataset)
    try:
        held = base_and_validation(args.dataset, held_out)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    base, val = held.base, held.validation
    # The Vinyals val split is fixed; the other data sets' validation classes are a seeded choice.
    seeded = "" if args.dataset == "omniglot-vinyals" else " (seed 0)"
    split = f"base: {held.base_text}; validation: {held.validation_text}{seeded}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.specs:
        spec.setdefault("image_size", base.image_size)
        spec.setdefault("channels", base.channels)
        if "checkpoint" in spec:
            net, card = load_base_model(spec["checkpoint"])
            card_config = card["hyperparameters"]
            train_s = card["training"]["seconds"]
            final_loss = card["history"][-1]["loss"] if card["history"] else None
        else:
            if args.budget_passes and "iterations" not in spec:
                # An equal budget of image passes, as in the Table 1 harness.
                spec["iterations"] = max(1, args.budget_passes
                                         // PretrainConfig(**spec).passes_per_iteration())
            config = PretrainConfig(**spec)
            # Omniglot's keys are the spec's alone, as the runs already made were keyed.
            keyed = spec if args.dataset == "omniglot" else {"dataset": args.dataset, **spec}
            key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
            ckpt = Path("runs/tune") / key
            # pretrain's resume skips a finished run (e.g. the same spec for another
            # --ways/--shots) and continues an unfinished one.
            result = pretrain(config, base, device=args.device, out_dir=ckpt, resume=ckpt.exists())
            net, final_loss = result.net, result.history[-1]["loss"]
            card_config = result.card["hyperparameters"]
            train_s = result.card["training"]["seconds"]
            print(f"{spec}: {train_s:.0f} s of training -> {ckpt}", flush=True)
        for adapt in args.adapt:
            started = time.perf_counter()
            try:
                cell = evaluate(net, val, ways=args.ways, shots=args.shots, queries=args.queries,
                                episodes=args.episodes, config=AdaptConfig(**adapt), seed=12345,
                                device=args.device)
            except ConfigError as exc:
                print(json.dumps({"spec": spec, "adapt": adapt, "error": str(exc)}), flush=True)
                continue
            row = {"dataset": args.dataset, "validation_classes": val.num_classes,
                   "validation_split": split,
                   "config": card_config,
                   "base_classes": base.num_classes, "spec": spec, "adapt": adapt,
                   "ways": args.ways, "shots": args.shots, "episodes": args.episodes,
                   "accuracy": round(cell.accuracy, 4), "ci95": round(cell.ci95, 4),
                   "train_seconds": round(train_s, 1), "final_loss": final_loss,
                   "eval_seconds": round(time.perf_counter() - started, 1),
                   "queries": args.queries, "per_episode": cell.per_episode,
                   "machine": f"{platform.machine()} {torch.get_num_threads()} threads"}
            print(json.dumps(row), flush=True)
            with args.out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
