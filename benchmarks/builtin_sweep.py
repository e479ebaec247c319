"""The built-in `handwriting` model's MTL candidate (issue 27): MTL-ProtoNet trained with the
handwriting recipe (Table 1's `builtin` profile: 20-way training episodes, the background
characters in 4 rotations as classes, the 6 validation alphabets held out), beta swept on the
validation alphabets.

Every beta is pretrained once (seed 0, fp32) at a third of the built-in budget (2M image passes:
the sweep ranks candidates, the shipped model is then trained at the full 6M with the winner
through `mtl bench table1 --profile builtin-mtl`) and scored by Table 1's adaptation choice on
the validation alphabets (three adaptations at 5-way 1-shot and 20-way 5-shot); the highest
score wins, an exact tie going to the beta listed first. Rows go to
benchmarks/results/builtin-sweep/omniglot-mtl-protonet.json after every candidate, so a stopped
run continues with the next; a candidate's checkpoint in runs/builtin-sweep/ continues too.

    python -m benchmarks.builtin_sweep [--betas 0.5,0.75,0.9] [--only 0.9] [--workers N]

`--only` runs one candidate (several processes side by side, one core each); the file is
re-read before each write, so their rows are merged.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.prereg_sweep import score_candidate, winner
from benchmarks.table1 import PROFILES, REPO, git_commit, load_splits, machine_description

METHOD = "mtl-protonet"
SWEEP_PASSES = 2_000_000
BETAS = [0.5, 0.75, 0.9]
OUT = REPO / "benchmarks" / "results" / "builtin-sweep" / "omniglot-mtl-protonet.json"


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"dataset": "omniglot", "method": METHOD,
                                                               "rows": []}


def sweep(betas: list[float], only: list[float], path: Path, workers: int) -> dict[str, Any]:
    profile = replace(PROFILES[("omniglot", "builtin")], budget_passes=SWEEP_PASSES)
    splits = load_splits("omniglot", profile)
    for beta in only or betas:
        if any(r["candidate"] == {"beta": beta} for r in _read(path)["rows"]):
            continue
        ckpt = REPO / "runs" / "builtin-sweep" / f"omniglot-{METHOD}-beta{beta:g}"
        row = score_candidate(METHOD, replace(profile, per_method={METHOD: {"beta": beta}}),
                              splits.base, splits.validation, ckpt, workers)
        row = {"candidate": {"beta": beta}, **row}
        print(json.dumps({k: v for k, v in row.items() if k in ("candidate", "score", "seconds")}),
              file=sys.stderr, flush=True)
        report = _read(path)
        report.update(machine=machine_description(), commit=git_commit(), budget_passes=SWEEP_PASSES,
                      base_classes=splits.base_text, validation_classes=splits.validation_text,
                      candidates=[{"beta": b} for b in betas],
                      command="python -m benchmarks.builtin_sweep --betas " + ",".join(f"{b:g}" for b in betas))
        report["rows"] = [r for r in report["rows"] if r["candidate"] != row["candidate"]] + [row]
        # Rows in the order the candidates are listed, so that a tie goes to the first.
        order = {b: i for i, b in enumerate(betas)}
        report["rows"].sort(key=lambda r: order.get(r["candidate"]["beta"], len(order)))
        report["complete"] = all(any(r["candidate"] == {"beta": b} for r in report["rows"]) for b in betas)
        report["winner"] = winner(report["rows"])["candidate"] if report["complete"] else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
    return _read(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--betas", default=",".join(f"{b:g}" for b in BETAS))
    p.add_argument("--only", default="", help="run only these of --betas (one process per candidate)")
    p.add_argument("--workers", type=int, default=1, help="processes for the adaptation choice's episodes")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    try:
        betas = [float(b) for b in args.betas.split(",") if b]
        only = [float(b) for b in args.only.split(",") if b]
    except ValueError:
        raise SystemExit(f"error: --betas/--only take numbers such as 0.5,0.9, got {args.betas!r} / {args.only!r}") from None
    if not betas or any(not 0.0 <= b <= 1.0 for b in betas + only) or set(only) - set(betas):
        raise SystemExit("error: betas must lie in [0, 1], and --only must name some of --betas")
    report = sweep(betas, only, args.out, args.workers)
    print(f"omniglot {METHOD}: winner {report.get('winner')} "
          f"({'complete' if report.get('complete') else 'incomplete'})")


if __name__ == "__main__":
    main()
