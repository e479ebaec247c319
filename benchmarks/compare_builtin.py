"""Two base models compared on validation classes, each with its card's default adaptation, on
the same seeded episodes: the paired difference (B minus A, with a 95% interval) in every cell.
Issue 27's rule for the `handwriting` model: the MTL candidate (B) replaces the shipped ProtoNet
(A) if no cell is below -0.5 points.

    python -m benchmarks.compare_builtin --a app/builtin_models/handwriting \\
        --b app/builtin_models/handwriting-mtl --dataset omniglot --profile builtin \\
        --ways 5,20 --shots 1,5,15 --episodes 100 --out benchmarks/results/handwriting-mtl-vs-protonet.json

The validation classes are those the profile held out of pretraining (`load_splits`): for the
built-in Omniglot profiles, the 6 validation alphabets. Each cell's queries: 15, or what a
class's images leave after the shots (5 at 15-shot on Omniglot's 20 drawings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.table1 import PROFILES, git_commit, load_splits, machine_description

SEED = 31337
MARGIN = -0.005


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of b - a over the episodes and its 95% interval's half-width."""
    d = np.asarray(b) - np.asarray(a)
    return float(d.mean()), 1.96 * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")


def compare(a: Path, b: Path, dataset: str, profile_name: str, ways: list[int], shots: list[int],
            episodes: int, workers: int) -> dict[str, Any]:
    from models.adaptation import evaluate
    from models.checkpoint import load_base_model
    from models.config import AdaptConfig

    splits = load_splits(dataset, PROFILES[(dataset, profile_name)])
    if splits.validation is None:
        raise SystemExit(f"error: the {profile_name} profile holds no validation classes out")
    val = splits.validation
    smallest = min(val.class_counts())
    models = {}
    for side, path in (("a", a), ("b", b)):
        net, card = load_base_model(path, device="cpu")
        models[side] = (net, AdaptConfig(**card["adaptation"]), card)
    cells = []
    for w in ways:
        for k in shots:
            if w > val.num_classes or k >= smallest:
                continue
            q = min(15, smallest - k)
            started = time.perf_counter()
            res = {side: evaluate(net, val, ways=w, shots=k, queries=q, episodes=episodes, config=adapt,
                                  seed=SEED, device="cpu", workers=workers)
                   for side, (net, adapt, _) in models.items()}
            diff, ci = paired(res["a"].per_episode, res["b"].per_episode)
            cell = {"ways": w, "shots": k, "queries": q, "episodes": episodes,
                    "a": round(res["a"].accuracy, 5), "a_ci95": round(res["a"].ci95, 5),
                    "b": round(res["b"].accuracy, 5), "b_ci95": round(res["b"].ci95, 5),
                    "difference": round(diff, 5), "difference_ci95": round(ci, 5),
                    "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(cell), file=sys.stderr, flush=True)
            cells.append(cell)
    worst = min(c["difference"] for c in cells)
    return {"a": {"path": str(a), "algorithm": models["a"][2].get("algorithm"),
                  "weights_sha256": models["a"][2].get("weights_sha256"),
                  "adaptation": models["a"][2]["adaptation"]},
            "b": {"path": str(b), "algorithm": models["b"][2].get("algorithm"),
                  "weights_sha256": models["b"][2].get("weights_sha256"),
                  "adaptation": models["b"][2]["adaptation"]},
            "classes": splits.validation_text, "seed": SEED, "cells": cells,
            "rule": f"B replaces A if no cell's difference (B - A) is below {MARGIN * 100:+.1f} points",
            "worst_difference": worst, "b_at_least_as_good": worst >= MARGIN,
            "machine": machine_description(), "commit": git_commit()}


def record(report: dict[str, Any], a: Path, b: Path, out: Path) -> None:
    """The comparison into each card, seen from that model's side (`difference`: this model
    minus the other, so a card reads the same way whichever side it was on)."""
    from models.checkpoint import record_metrics

    for side, path, other, sign in (("a", a, b, -1), ("b", b, a, 1)):
        record_metrics(path, "validation_comparison", {
            "against": other.name, "classes": report["classes"], "seed": report["seed"],
            "rule": report["rule"], "candidate_at_least_as_good": report["b_at_least_as_good"],
            "role": "in service" if side == "a" else "candidate",
            "cells": [{"ways": c["ways"], "shots": c["shots"], "episodes": c["episodes"],
                       "accuracy": c[side], "other": c["b" if side == "a" else "a"],
                       "difference": round(sign * c["difference"], 5),
                       "difference_ci95": c["difference_ci95"]} for c in report["cells"]],
            "command": report["command"], "file": str(out)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", type=Path, required=True, help="the model in service (a checkpoint folder)")
    p.add_argument("--b", type=Path, required=True, help="the candidate")
    p.add_argument("--dataset", default="omniglot")
    p.add_argument("--profile", default="builtin", help="the Table 1 profile whose validation classes to use")
    p.add_argument("--ways", default="5,20")
    p.add_argument("--shots", default="1,5,15")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--record", action="store_true",
                   help="also store the comparison in both cards (metrics.validation_comparison)")
    args = p.parse_args()
    if (args.dataset, args.profile) not in PROFILES:
        raise SystemExit(f"error: no {args.profile} profile for {args.dataset}")
    try:
        ways = [int(w) for w in args.ways.split(",") if w]
        shots = [int(k) for k in args.shots.split(",") if k]
    except ValueError:
        raise SystemExit("error: --ways and --shots take comma-separated integers") from None
    report = compare(args.a, args.b, args.dataset, args.profile, ways, shots, args.episodes, args.workers)
    report["command"] = "python -m benchmarks.compare_builtin " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.record:
        record(report, args.a, args.b, args.out)
    for c in report["cells"]:
        print(f"{c['ways']}-way {c['shots']}-shot: A {c['a'] * 100:.2f}  B {c['b'] * 100:.2f}  "
              f"B-A {c['difference'] * 100:+.2f} +- {c['difference_ci95'] * 100:.2f}")
    print(report["rule"] + (": yes" if report["b_at_least_as_good"] else ": no"))


if __name__ == "__main__":
    main()
