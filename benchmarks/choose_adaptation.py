"""Choose a built-in base model's default adaptation on validation classes (issue 11).

Every candidate adaptation (steps, learning rate, head init, batch-norm statistics, batch size
and min_epochs, augmentation) is scored on the validation classes the model never trained on,
at 5 and 20 ways and 1, 5 and 15 or 20 shots (Omniglot has 20 drawings a character, so 15 there),
on the same seeded episodes for every candidate. The winner is the candidate with the best mean
accuracy over the cells; with `--apply` it becomes the card's `adaptation`, and the card's
`adaptation_choice` keeps every candidate's numbers.

    python -m benchmarks.choose_adaptation --model app/builtin_models/handwriting \\
        --dataset omniglot --episodes 40 --apply

Rows go to benchmarks/results/adaptation-<model>.jsonl (one per candidate and cell, resumable:
rows already there for the same weights are not recomputed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.table1 import FINE_TUNE
from models.config import AdaptConfig

REPO = Path(__file__).resolve().parents[1]

# Table 1's fine-tuning settings, with its batch cap (Profile.adapt_batch).
_TUNE: dict[str, Any] = {**FINE_TUNE, "batch_size": 64}
CANDIDATES: dict[str, AdaptConfig] = {
    "prototype-0-steps": AdaptConfig(steps=0, lr=0.0, batch_size=64, head_init="prototype", bn_stats="frozen"),
    "zeros": AdaptConfig(**_TUNE, head_init="zeros"),
    "prototype": AdaptConfig(**_TUNE, head_init="prototype"),
    "prototype-augment": AdaptConfig(**_TUNE, head_init="prototype", augment=True),
    "prototype-lr0.03": AdaptConfig(**{**_TUNE, "lr": 0.03}, head_init="prototype"),
    "prototype-frozen-bn": AdaptConfig(**{**_TUNE, "bn_stats": "frozen"}, head_init="prototype"),
    "prototype-epochs10-batch32": AdaptConfig(**{**_TUNE, "min_epochs": 10, "batch_size": 32},
                                                           head_init="prototype"),
}


def validation_classes(dataset: str) -> tuple[Any, str]:
    """The held-out classes Table 1's validated profiles choose on (never the unseen ones)."""
    from benchmarks.splits import base_and_validation

    held = base_and_validation(dataset)
    return held.validation, held.validation_text


def run(model: Path, dataset: str, episodes: int, ways: list[int], shots: list[int],
        names: list[str], rows_path: Path) -> list[dict[str, Any]]:
    from models.adaptation import evaluate
    from models.checkpoint import load_base_model

    net, card = load_base_model(model, device="cpu")
    weights = card.get("weights_sha256")
    val, val_text = validation_classes(dataset)
    smallest = min(val.class_counts())
    done = [json.loads(line) for line in rows_path.read_text().splitlines()] if rows_path.exists() else []
    # Rows are reused only for these very weights: a retrained model in the same folder (the
    # built-in models are replaced in place) must not inherit its predecessor's scores.
    rows = [r for r in done if r["episodes"] == episodes and r.get("weights_sha256") == weights]
    for name in names:
        config = CANDIDATES[name]
        for w in ways:
            for s in shots:
                if any(r["candidate"] == name and r["ways"] == w and r["shots"] == s for r in rows):
                    continue
                queries = min(15, smallest - s)
                if queries < 1:
                    raise SystemExit(f"error: {s}-shot leaves no queries ({smallest} images in the smallest class)")
                t0 = time.perf_counter()
                cell = evaluate(net, val, ways=w, shots=s, queries=queries, episodes=episodes,
                                config=config, seed=12345, device="cpu")
                row = {"candidate": name, "adaptation": asdict(config), "ways": w, "shots": s,
                       "queries": queries, "episodes": episodes, "accuracy": round(cell.accuracy, 5),
                       "ci95": round(cell.ci95, 5), "seconds": round(time.perf_counter() - t0, 1),
                       "validation_classes": val_text, "model": str(model), "weights_sha256": weights}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
                with rows_path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: its cells and their mean accuracy, best first."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = out.setdefault(r["candidate"], {"candidate": r["candidate"], "adaptation": r["adaptation"], "cells": []})
        c["cells"].append({k: r[k] for k in ("ways", "shots", "queries", "episodes", "accuracy", "ci95")})
    for c in out.values():
        c["mean_accuracy"] = round(sum(x["accuracy"] for x in c["cells"]) / len(c["cells"]), 5)
    return sorted(out.values(), key=lambda c: -c["mean_accuracy"])


def apply(model: Path, summary: list[dict[str, Any]], val_text: str, command: str) -> None:
    from models.checkpoint import load_checkpoint, save_checkpoint

    cells = {len(c["cells"]) for c in summary}
    if len(cells) != 1:
        raise SystemExit("error: candidates were scored on different cells; finish the run first")
    tensors, card = load_checkpoint(model)
    card["adaptation"] = summary[0]["adaptation"]
    card["adaptation_choice"] = {"on": val_text, "rule": "best mean accuracy over the cells",
                                 "command": command, "candidates": summary}
    save_checkpoint(model, tensors, card)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="a base model folder (model.json + weights)")
    p.add_argument("--dataset", choices=["omniglot", "miniimagenet-lite", "miniimagenet-lite-ravi"],
                   required=True)
    p.add_argument("--episodes", type=int, default=40, help="episodes per cell")
    p.add_argument("--ways", default="5,20", help="comma-separated way counts")
    p.add_argument("--shots", default="", help="comma-separated shot counts (default 1,5,15 on "
                   "Omniglot, 1,5,20 on miniImageNet-lite)")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated candidate names")
    p.add_argument("--apply", action="store_true", help="write the winner into the model's card")
    p.add_argument("--rows", type=Path, default=None,
                   help="where the rows go (default benchmarks/results/adaptation-<model>.jsonl)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; known: {list(CANDIDATES)}")
    shots = [int(s) for s in (args.shots or ("1,5,15" if args.dataset == "omniglot" else "1,5,20")).split(",")]
    ways = [int(w) for w in args.ways.split(",")]
    rows_path = args.rows or REPO / "benchmarks" / "results" / f"adaptation-{args.model.name}.jsonl"
    from models.errors import MTLError

    try:
        rows = run(args.model, args.dataset, args.episodes, ways, shots, names, rows_path)
    except MTLError as exc:  # a missing model, episodes the classes cannot fill: one line
        p.error(str(exc))
    summary = summarise([r for r in rows if r["candidate"] in names])
    for c in summary:
        print(f"{c['mean_accuracy']:.4f}  {c['candidate']}")
    if args.apply:
        _, val_text = validation_classes(args.dataset)
        apply(args.model, summary, val_text, "python -m benchmarks.choose_adaptation " + " ".join(argv or sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
