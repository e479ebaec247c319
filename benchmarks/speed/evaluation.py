"""What an episodic evaluation costs on miniImageNet-lite, cell by cell, fp32 and bf16.

For each cell of the paper's grid (5/20/35-way x 1/5/100-shot, unseen val + test classes) and each
kind of adaptation Table 1 uses (fine-tuning: 30 steps or 20 epochs of 64-image batches,
whichever is more; nearest class mean: no steps), the seconds one episode takes on one thread,
fp32 and bf16, from `--episodes` episodes (the network: Conv-4 with 32 filters; the cost does not
depend on its weights). The projection for 600 episodes is per process; `mtl evaluate --workers
N` and `mtl bench table1 --workers N` divide it by up to N.

    python -m benchmarks.speed.evaluation [--episodes 2] [--out benchmarks/results/speed-evaluation.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import git_commit, machine_description
from benchmarks.table1 import FINE_TUNE, PROFILES
from models.adaptation import evaluate
from models.config import AdaptConfig
from models.data import concat, data_root
from models.loaders import load_dataset
from models.network import build_metanet

ADAPTATIONS: dict[str, AdaptConfig] = {
    "fine-tune": AdaptConfig(**{**FINE_TUNE, "head_init": "zeros",
                                "batch_size": PROFILES[("miniimagenet-lite", "full")].adapt_batch}),
    "prototypes": AdaptConfig(steps=0, lr=0.0, head_init="prototype", bn_stats="frozen"),
}
GRID = [(w, k) for w in (5, 20, 35) for k in (1, 5, 100)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=2, help="episodes timed per cell and precision")
    p.add_argument("--adaptations", default=",".join(ADAPTATIONS),
                   help=f"comma-separated subset of {', '.join(ADAPTATIONS)}")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/speed-evaluation.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    root = data_root() / "miniimagenet-lite"
    unseen = concat([load_dataset(root / s, image_size=84, channels=3) for s in ("val", "test")])
    torch.manual_seed(0)
    net = build_metanet(backbone="conv4", filters=32, channels=3, image_size=84, meta_ways=5,
                        num_base_classes=64, mean=[0.47, 0.45, 0.41], std=[0.28, 0.27, 0.29])
    rows: list[dict[str, Any]] = []
    for precision in ("fp32", "bf16"):  # untimed: oneDNN builds its kernels on first use
        evaluate(net, unseen, ways=5, shots=5, queries=15, episodes=1, config=ADAPTATIONS["fine-tune"],
                 seed=1, precision=precision)
    chosen = {n: a for n, a in ADAPTATIONS.items() if n in args.adaptations.split(",")}
    for name, adapt in chosen.items():
        for ways, shots in GRID:
            row: dict[str, Any] = {"adaptation": name, "ways": ways, "shots": shots,
                                   "support_images": ways * shots,
                                   "steps": adapt.steps_for(ways * shots)}
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                evaluate(net, unseen, ways=ways, shots=shots, queries=20 if shots == 100 else 15,
                         episodes=args.episodes, config=adapt, seed=2019, precision=precision)
                per_episode = (time.perf_counter() - t0) / args.episodes
                row[f"{precision}_seconds_per_episode"] = round(per_episode, 2)
                row[f"{precision}_hours_for_600"] = round(600 * per_episode / 3600, 2)
            row["bf16_speedup"] = round(row["fp32_seconds_per_episode"] / row["bf16_seconds_per_episode"], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    totals = {f"{name}_{p}_hours_for_600_all_cells": round(sum(
        r[f"{p}_hours_for_600"] for r in rows if r["adaptation"] == name), 2)
        for name in chosen for p in ("fp32", "bf16")}
    report = {
        "benchmark": "evaluation cost per episode, miniImageNet-lite val + test, one thread",
        "machine": machine_description(), "commit": git_commit(),
        "command": f"python -m benchmarks.speed.evaluation --episodes {args.episodes}"
                   + (f" --adaptations {args.adaptations}" if chosen.keys() != ADAPTATIONS.keys() else ""),
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "adaptations": {k: vars(v) for k, v in chosen.items()},
        "queries": "15 a class (20 at 100 shots, as the full profile)",
        "totals": totals, "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
