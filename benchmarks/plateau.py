"""Validation accuracy against image passes: where does pretraining flatten?

Pretrains one spec on the base classes of benchmarks/tune.py's split (Omniglot background minus 6
held-out alphabets) and, every `--every` image passes, scores it on the held-out VALIDATION
alphabets (never the unseen evaluation alphabets): 5-way 1-shot with the method's adaptation, and
with the prototype head alone (0 steps, a probe of the features). Resumable: the run checkpoints
to runs/plateau/<name>, and the curve lives in its card.

    python -m benchmarks.plateau run --name transfer --passes 1000000 --every 125000 \\
        --spec '{"algorithm": "transfer", ...}' --adapt '{"steps": 30, ...}'
    python -m benchmarks.plateau plot --out benchmarks/results/plateau-omniglot.png NAME...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "plateau-omniglot"
EPISODES = 60
PROBE = {"steps": 0, "lr": 0.0, "head_init": "prototype", "bn_stats": "frozen"}


def run(name: str, spec: dict[str, Any], adapt: dict[str, Any], passes: int, every: int) -> dict[str, Any]:
    import torch

    from benchmarks.table1 import git_commit, machine_description
    from benchmarks.tune import omniglot_split
    from models.adaptation import evaluate
    from models.config import AdaptConfig, PretrainConfig
    from models.network import MetaNet
    from models.training import pretrain

    base, val = omniglot_split(6, 0)
    spec = {"image_size": 28, "channels": 1, **spec, "iterations": 1}
    config = PretrainConfig(**spec)
    per_iteration = config.passes_per_iteration()
    config.iterations = max(1, passes // per_iteration)

    def validate(net: MetaNet) -> dict[str, float]:
        scores = {}
        for key, cfg in (("accuracy", adapt), ("probe_accuracy", PROBE)):
            cell = evaluate(net, val, ways=5, shots=1, queries=15, episodes=EPISODES,
                            config=AdaptConfig(**cfg), seed=12345, device="cpu")
            scores[key], scores[key.replace("accuracy", "ci95")] = cell.accuracy, cell.ci95
        return scores

    ckpt = REPO / "runs" / "plateau" / name
    result = pretrain(config, base, device="cpu", out_dir=ckpt, resume=ckpt.exists(), checkpoint_every_s=120,
                      validate=validate, validate_every=max(1, every // per_iteration))
    report = {"name": name, "spec": spec, "config": result.card["hyperparameters"], "adaptation": adapt,
              "validation_classes": f"{val.num_classes} characters of 6 held-out background alphabets",
              "cell": f"5-way 1-shot, 15 queries, {EPISODES} episodes (seed 12345)",
              "curve": result.card["validation"], "train_seconds": result.card["training"]["seconds"],
              "machine": machine_description(), "threads": torch.get_num_threads(), "commit": git_commit()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def plot(names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        report = json.loads((RESULTS / f"{name}.json").read_text())
        curve = report["curve"]
        xs = [p["passes"] for p in curve]
        for ax, key in zip(axes, ("accuracy", "probe_accuracy"), strict=True):
            ys = [100 * p[key] for p in curve]
            es = [100 * p[key.replace("accuracy", "ci95")] for p in curve]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
    for ax, title in zip(axes, ("with the method's adaptation", "prototype head, 0 steps (feature probe)"),
                         strict=True):
        ax.set_title(f"5-way 1-shot, validation alphabets: {title}", fontsize=9)
        ax.set_xlabel("image passes (forward + backward)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--name", required=True)
    r.add_argument("--spec", type=json.loads, required=True, help="PretrainConfig fields (JSON)")
    r.add_argument("--adapt", type=json.loads, required=True, help="AdaptConfig fields (JSON)")
    r.add_argument("--passes", type=int, default=1_000_000)
    r.add_argument("--every", type=int, default=125_000)
    g = sub.add_parser("plot")
    g.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "plateau-omniglot.png")
    g.add_argument("names", nargs="+")
    args = p.parse_args(argv)
    if args.command == "run":
        report = run(args.name, args.spec, args.adapt, args.passes, args.every)
        for point in report["curve"]:
            print(json.dumps(point))
    else:
        plot(args.names, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
