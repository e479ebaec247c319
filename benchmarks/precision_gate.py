"""Issue 25's accuracy gate for bf16: two Table 1 runs of one profile, pretrained with the same
seed in fp32 and in bf16 and scored on the same episodes, compared method by method and cell by
cell (bf16 minus fp32, paired over episodes, 95% interval).

bf16 passes for pretraining where every interval includes 0 or lies above it, and the
pretraining is at least 1.5x as fast; the speed comes from `benchmarks/speed/pretraining.py`
(timed alternately on a quiet machine), not from these runs' train_seconds, which ran beside
other work.

    python -m benchmarks.precision_gate --fp32 DIR --bf16 DIR [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from models.adaptation import paired_difference


def compare(fp32: dict[str, Any], bf16: dict[str, Any]) -> dict[str, Any]:
    """Per method and cell, bf16 minus fp32 over their shared episodes."""
    base = {(c["method"], c["ways"], c["shots"]): c for c in fp32["cells"]}
    rows = []
    for c in bf16["cells"]:
        ref = base.get((c["method"], c["ways"], c["shots"]))
        if ref is None:
            continue
        difference, ci95 = paired_difference(c["per_episode"], ref["per_episode"])
        below = difference + ci95 < 0
        rows.append({"method": c["method"], "ways": c["ways"], "shots": c["shots"],
                     "episodes": c["episodes"], "fp32": ref["accuracy"], "bf16": c["accuracy"],
                     "difference": difference, "ci95": ci95,
                     "verdict": "bf16 worse" if below else
                     ("bf16 better" if difference - ci95 > 0 else "tied")})
    train = {m: {"fp32_seconds": fp32["methods"][m]["train_seconds"],
                 "bf16_seconds": info["train_seconds"],
                 "speedup": round(fp32["methods"][m]["train_seconds"] / info["train_seconds"], 2)}
             for m, info in bf16["methods"].items() if m in fp32["methods"]}
    return {"dataset": bf16["dataset"], "profile": bf16["profile"],
            "precision": {"fp32 run": fp32.get("precision"), "bf16 run": bf16.get("precision")},
            "commands": [fp32["command"], *(bf16["command"] if isinstance(bf16["command"], list)
                                            else [bf16["command"]])],
            "rows": rows, "passes": not any(r["verdict"] == "bf16 worse" for r in rows),
            "train_seconds_beside_other_work": train}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, required=True, help="the fp32 run's --out folder")
    p.add_argument("--bf16", type=Path, nargs="+", required=True,
                   help="the bf16 run's --out folder (several: their methods together, the later "
                        "folder's where a method is in more than one)")
    p.add_argument("--out", type=Path, default=None, help="write the comparison here (JSON)")
    args = p.parse_args()
    bf16: dict[str, Any] = {}
    for folder in args.bf16:
        part = json.loads((folder / "results.json").read_text())
        if not bf16:
            bf16 = {**part, "cells": [], "methods": {}, "command": []}
        bf16["cells"] = [c for c in bf16["cells"] if c["method"] not in part["methods"]] + part["cells"]
        bf16["methods"].update(part["methods"])
        bf16["command"].append(part["command"])
    report = compare(json.loads((args.fp32 / "results.json").read_text()), bf16)
    for r in report["rows"]:
        print(f"{r['method']:<13} {r['ways']:>2}-way {r['shots']:>3}-shot  fp32 {100 * r['fp32']:6.2f}  "
              f"bf16 {100 * r['bf16']:6.2f}  bf16 - fp32 {100 * r['difference']:+6.2f} +- "
              f"{100 * r['ci95']:.2f}  {r['verdict']}")
    print("passes" if report["passes"] else "fails", "(no interval below 0)" if report["passes"] else "")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
