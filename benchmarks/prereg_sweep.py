"""docs/preregistration.md's validation sweep: each method's training-episode ways and rotated
classes, chosen on validation classes before any prereg run is scored on unseen classes.

Every candidate is pretrained once (seed 0, the prereg profile's budget, precision and recipe)
on the base classes minus the validation classes, then scored by Table 1's adaptation choice
(`benchmarks.table1.choose_adaptation`: three adaptations at the smallest and the largest
validation cell); its score is the best adaptation's mean. The highest score wins; an exact tie
goes to the candidate listed first (the simpler: 5 ways, no rotations). One JSON file per data
set and method under benchmarks/results/prereg-sweep/, written after every candidate, so a run
stopped anywhere continues with the next one.

    python -m benchmarks.prereg_sweep --dataset omniglot --methods protonet,mtl-protonet [--workers N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, git_commit, machine_description
from benchmarks.table1 import (
    PREREG_METHODS,
    PROFILES,
    RECIPES,
    Profile,
    choose_adaptation,
    load_splits,
    method_config,
)

EPISODIC = ("protonet", "mtl-protonet")


def candidates(dataset: str, method: str) -> list[dict[str, Any]]:
    """The settings a method chooses among on `dataset`, simplest first."""
    ways = [5, 20] if method in EPISODIC else [5]
    rotations = [False, True] if dataset == "omniglot" else [False]
    return [{"ways": w, "rotations": r} for r in rotations for w in ways]


def tag(candidate: dict[str, Any]) -> str:
    return f"ways{candidate['ways']}" + ("-rotations" if candidate["rotations"] else "")


def winner(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The highest score; an exact tie goes to the row listed first (the simpler candidate)."""
    best = rows[0]
    for row in rows[1:]:
        if row["score"] > best["score"]:
            best = row
    return best


def score_candidate(method: str, profile: Profile, base: Any, validation: Any, ckpt: Path,
                    workers: int) -> dict[str, Any]:
    """Pretrain `method` as `profile` sets it (seed 0, its budget and precision) on `base` into
    `ckpt` (continuing a checkpoint there; reusing a finished one), then score it on `validation`
    by Table 1's adaptation choice: the row of a sweep, its score the best adaptation's mean."""
    from models.checkpoint import load_base_model, load_checkpoint
    from models.config import AdaptConfig
    from models.errors import CheckpointError
    from models.training import pretrain

    precision = str(profile.common.get("precision", "fp32"))
    config = replace(method_config(method, profile), seed=0, precision=precision)
    try:
        done = load_checkpoint(ckpt)[1]["training"]["completed"]
    except CheckpointError:
        done = False
    started = time.perf_counter()
    if not done:
        print(f"[{method} {ckpt.name}] pretraining {config.iterations} iterations",
              file=sys.stderr, flush=True)
        pretrain(config, base, device="cpu", out_dir=ckpt, resume=ckpt.exists(), checkpoint_every_s=120)
    net, card = load_base_model(ckpt, device="cpu")
    adaptations = [AdaptConfig(**{**a, "batch_size": profile.adapt_batch})
                   for a in RECIPES[profile.recipe][2][method]]
    choice = choose_adaptation(net, validation, adaptations, profile, precision, workers)
    return {"score": max(c["accuracy"] for c in choice), "adaptation_choice": choice,
            "config": asdict(config), "train_seconds": card["training"]["seconds"],
            "weights_sha256": card.get("weights_sha256"),
            "seconds": round(time.perf_counter() - started, 1)}


def sweep(dataset: str, method: str, out_dir: Path, workers: int) -> dict[str, Any]:
    from models.data import with_rotations

    profile = PROFILES[(dataset, "prereg")]
    precision = str(profile.common.get("precision", "fp32"))
    path = out_dir / f"{dataset}-{method}.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {
        "dataset": dataset, "method": method, "preregistration": "docs/preregistration.md, version 1",
        "rows": []}
    report.update(machine=machine_description(), commit=git_commit(), precision=precision,
                  command=f"python -m benchmarks.prereg_sweep --dataset {dataset} --methods {method}"
                          + (f" --workers {workers}" if workers > 1 else ""))
    splits = load_splits(dataset, profile)
    for candidate in candidates(dataset, method):
        if any(r["candidate"] == candidate for r in report["rows"]):
            continue
        base = with_rotations(splits.base) if candidate["rotations"] else splits.base
        ckpt = REPO / "runs" / "prereg-sweep" / dataset / f"{method}-{tag(candidate)}"
        row = score_candidate(method, replace(profile, per_method={method: candidate}), base,
                              splits.validation, ckpt, workers)
        row = {"candidate": candidate, **row}
        print(json.dumps({k: v for k, v in row.items() if k in ("candidate", "score", "seconds")}),
              file=sys.stderr, flush=True)
        report["rows"].append(row)
        report["winner"] = winner(report["rows"])["candidate"]
        report["complete"] = len(report["rows"]) == len(candidates(dataset, method))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["omniglot", "miniimagenet-lite"], required=True)
    p.add_argument("--methods", default=",".join(PREREG_METHODS))
    p.add_argument("--workers", type=int, default=1, help="processes for the adaptation choice's episodes")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "prereg-sweep")
    args = p.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(PREREG_METHODS))
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; the pre-registered ones: {', '.join(PREREG_METHODS)}")
    for method in methods:
        report = sweep(args.dataset, method, args.out, args.workers)
        print(f"{args.dataset} {method}: winner {report.get('winner')} "
              f"({'complete' if report.get('complete') else 'incomplete'})")


if __name__ == "__main__":
    main()
