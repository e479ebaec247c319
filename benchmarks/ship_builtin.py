"""Make a Table 1 base model a built-in one: copy its checkpoint into app/builtin_models/<name>,
with a card that says what a user needs (what it was trained on, for how long, on what machine,
its measured accuracy on unseen classes, the recommended adaptation, what it suits) and its
training curve (validation accuracy against image passes) as curve.png beside the card.

    python -m benchmarks.ship_builtin --report benchmarks/results/table1-omniglot-fair \\
        --dataset omniglot --method METHOD --name handwriting --suits "..."

`--method best` takes the method with the highest validation accuracy (its chosen adaptation on
the validation classes), never the unseen-class numbers. With several `--report`s (e.g. one
profile per backbone width) it takes the best over all of them; they must have been validated
on the same classes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _choice_rule(candidates: list[dict[str, Any]]) -> str:
    """How the report chose the adaptation: reports before the two-cell rule scored 5-way 1-shot."""
    cells = candidates[0].get("cells") if candidates else None
    if not cells:
        return "5-way 1-shot, 100 episodes"
    return "best mean over " + ", ".join(f"{c['ways']}-way {c['shots']}-shot" for c in cells)


def validation_scores(report: dict[str, Any]) -> dict[str, float]:
    """Each method's best adaptation score on the validation classes."""
    return {m: max(c["accuracy"] for c in info["adaptation_choice"])
            for m, info in report["methods"].items() if info.get("adaptation_choice")}


def best_on_validation(report: dict[str, Any]) -> str:
    """The method whose adaptation scored highest on the validation classes."""
    return pick([report], "best")[1]


def pick(reports: list[dict[str, Any]], method: str) -> tuple[dict[str, Any], str]:
    """(report, method): `method` from the first report that has it, or with "best" the highest
    validation score over every report's methods."""
    if method != "best":
        for report in reports:
            if method in report["methods"]:
                return report, method
        raise SystemExit(f"error: no report has the method {method!r}")
    if len({r.get("validation_classes") for r in reports}) != 1:
        raise SystemExit("error: the reports were validated on different classes; their scores do not compare")
    rules = {_choice_rule(info["adaptation_choice"]) for r in reports for info in r["methods"].values()
             if info.get("adaptation_choice")}
    if len(rules) > 1:
        raise SystemExit(f"error: the reports scored validation on different cells ({'; '.join(sorted(rules))}); "
                         "their scores do not compare")
    scored = [(score, i, m) for i, r in enumerate(reports) for m, score in validation_scores(r).items()]
    if not scored:
        raise SystemExit("error: the reports have no validation scores (run a profile with holdout_validation)")
    _, i, best = max(scored)
    return reports[i], best


def selection(reports: list[dict[str, Any]], chosen: dict[str, Any], method: str) -> str:
    """The card's sentence on how the model was picked among the candidates."""
    names = [f"{m} ({r['profile']} profile, {score:.1%})" if len(reports) > 1 else m
             for r in reports for m, score in validation_scores(r).items()] or \
        [m for r in reports for m in r["methods"]]
    where = f" ({chosen['profile']} profile)" if len(reports) > 1 else ""
    return (f"the best of {len(names)} Table 1 base models on the validation classes "
            f"({', '.join(names)}): {method}{where}")


def ship(report_dirs: Path | list[Path], dataset: str, method: str, name: str, suits: str,
         out_root: Path = REPO / "app" / "builtin_models") -> Path:
    from benchmarks.table1 import write_curves
    from models.checkpoint import load_checkpoint, save_checkpoint

    dirs = [report_dirs] if isinstance(report_dirs, Path) else report_dirs
    reports = [json.loads((d / "results.json").read_text()) for d in dirs]
    report, method = pick(reports, method)
    profile = report["profile"]
    info = report["methods"][method]
    source = Path(info.get("checkpoint") or REPO / "runs" / "bench" / f"{dataset}-{profile}" / method)
    tensors, card = load_checkpoint(source)
    cells = [{k: c[k] for k in ("ways", "shots", "queries", "episodes", "accuracy", "ci95")}
             for c in report["cells"] if c["method"] == method]
    card.update({
        "adaptation": info["adaptation"],
        "adaptation_choice": {"on": report.get("validation_classes"),
                              "cell": _choice_rule(info["adaptation_choice"]),
                              "candidates": info["adaptation_choice"]},
        "description": suits,  # what the console shows as "suits"
        "trained_on": report.get("base_classes", card["data"]["source"]),
        "metrics": {"unseen_classes": {"classes": report["unseen_classes"], "results": cells,
                                       "evaluation": report["evaluation"],
                                       "command": report["command"]}},
        "selection": selection(reports, report, method),
        "training_curve": "curve.png",
    })
    out = out_root / name
    staging = out.with_name(f".{name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, {k: v for k, v in tensors.items() if not k.startswith("_state.")}, card)
    write_curves({"dataset": dataset, "profile": profile, "methods": {method: info}}, staging / "curve.png")
    # Replace the old model only once the new one is whole.
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, required=True, action="append",
                   help="a Table 1 report folder (results.json); repeat to choose among several")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", default="best", help="a method of the reports, or best (on validation)")
    p.add_argument("--name", required=True, help="the built-in model's id, e.g. handwriting")
    p.add_argument("--suits", required=True, help="what kinds of images it suits, for the card")
    args = p.parse_args(argv)
    out = ship(args.report, args.dataset, args.method, args.name, args.suits)
    print(f"wrote {out}/model.safetensors, model.json and curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
