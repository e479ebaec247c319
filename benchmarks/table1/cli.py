"""`mtl bench table1` and `python -m benchmarks.table1`: the options and what they run."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.harness import REPO
from benchmarks.splits import DATASETS
from benchmarks.table1.profiles import METHODS, PROFILES
from benchmarks.table1.report import MergeError, merge
from benchmarks.table1.scoring import run
from models.config import PRECISIONS  # torch-free


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASETS, required=True,
                   help="base classes to pretrain on and unseen classes to score on")
    by_dataset = "; ".join(f"{d}: {', '.join(n for dd, n in PROFILES if dd == d)}" for d in DATASETS)
    p.add_argument("--profile", choices=sorted({name for _, name in PROFILES}), default="quick",
                   help=f"budget, grid and recipe (default: quick); each data set has its own: {by_dataset}")
    p.add_argument("--out", type=Path, default=None,
                   help="default: benchmarks/results/table1-<dataset>-<profile>")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0,
                   help="pretraining seed (default 0, as in the committed reports); another seed "
                   "pretrains each method again into its own checkpoint folder and scores it on "
                   "the same episodes: a replication")
    p.add_argument("--cells", default="", help="only these cells, e.g. 20x1,20x5 (ways x shots): "
                   "one method's cells in several processes, merged with --merge")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="pretraining precision: bf16 autocast where the hardware has it (its "
                        "checkpoints go to their own folder), or fp32 (default: the profile's, "
                        "else fp32)")
    p.add_argument("--eval-precision", choices=PRECISIONS, default=None,
                   help="the adaptation's precision when scoring (default: --precision)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes (one torch thread each) that share each cell's episodes; "
                        "the result equals one process's at one thread")
    p.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                   help="instead of running, combine finished runs of disjoint --methods subsets "
                        "(their --out folders) into one report in --out")


def main(args: argparse.Namespace) -> int:
    if (args.dataset, args.profile) not in PROFILES:
        raise SystemExit(f"error: no {args.profile} profile for {args.dataset}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; known: {', '.join(METHODS)}")
    out = args.out or REPO / "benchmarks" / "results" / f"table1-{args.dataset}-{args.profile}"
    if args.merge:
        try:
            report = merge(args.merge, args.dataset, args.profile, out)
        except MergeError as e:
            raise SystemExit(f"error: {e}") from None
    else:
        try:
            cells = [(int(w), int(k)) for w, k in (c.lower().split("x") for c in args.cells.split(",") if c)]
        except ValueError:
            raise SystemExit(f"error: --cells takes WAYSxSHOTS pairs such as 20x5, got {args.cells!r}") from None
        profile = PROFILES[(args.dataset, args.profile)]
        outside = [f"{w}x{k}" for w, k in cells if w not in profile.ways or k not in profile.shots]
        if outside:
            raise SystemExit(f"error: --cells {', '.join(outside)} not in the {args.profile} profile's "
                             f"grid (ways {profile.ways}, shots {profile.shots})")
        if args.seed < 0:
            raise SystemExit(f"error: --seed must be 0 or more, got {args.seed}")
        if args.workers < 1:
            raise SystemExit(f"error: --workers must be at least 1, got {args.workers}")
        report = run(args.dataset, args.profile, out, methods, args.device, cells or None, args.seed,
                     args.precision, args.eval_precision, args.workers)
    print((out / "table1.md").read_text())
    print(f"wrote {out}/results.json, table1.md, table1.png "
          f"({report.get('wall_clock_seconds', 0) / 60:.0f} min)")
    return 0
