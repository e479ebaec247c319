"""Make a Table 1 base model a built-in one: copy its checkpoint into app/builtin_models/<name>,
with a card that says what a user needs (what it was trained on, for how long, on what machine,
its measured accuracy on unseen classes, the recommended adaptation, what it suits) and its
training curve (validation accuracy against image passes) as curve.png beside the card.

    python -m benchmarks.ship_builtin --report benchmarks/results/table1-omniglot-fair \\
        --dataset omniglot --profile fair --method METHOD --name handwriting --suits "..."

`--method best` takes the method with the highest validation accuracy (its chosen adaptation on
the validation classes), never the unseen-class numbers.
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


def best_on_validation(report: dict[str, Any]) -> str:
    """The method whose adaptation scored highest on the validation classes."""
    scored = {m: max(c["accuracy"] for c in info["adaptation_choice"])
              for m, info in report["methods"].items() if info.get("adaptation_choice")}
    if not scored:
        raise SystemExit("error: the report has no validation scores (run a profile with holdout_validation)")
    return max(scored, key=lambda m: scored[m])


def ship(report_dir: Path, dataset: str, profile: str, method: str, name: str, suits: str,
         out_root: Path = REPO / "app" / "builtin_models") -> Path:
    from benchmarks.table1 import write_curves
    from models.checkpoint import load_checkpoint, save_checkpoint

    report = json.loads((report_dir / "results.json").read_text())
    if method == "best":
        method = best_on_validation(report)
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
        "selection": f"the best of {len(report['methods'])} Table 1 methods on the validation classes "
                     f"({', '.join(report['methods'])}): {method}",
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
    p.add_argument("--report", type=Path, required=True, help="a Table 1 report folder (results.json)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--profile", required=True)
    p.add_argument("--method", default="best")
    p.add_argument("--name", required=True, help="the built-in model's id, e.g. handwriting")
    p.add_argument("--suits", required=True, help="what kinds of images it suits, for the card")
    args = p.parse_args(argv)
    out = ship(args.report, args.dataset, args.profile, args.method, args.name, args.suits)
    print(f"wrote {out}/model.safetensors, model.json and curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
