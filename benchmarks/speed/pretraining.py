"""Pretraining throughput against its ceiling, fp32 and bf16.

For Conv-4 at 28x28 greyscale (Omniglot background) and 84x84 RGB (miniImageNet-lite train):

- (a) the bare step: one forward, backward and SGD step of the network (transfer head) on a
  batch of random tensors, at each batch size the profiles train on, in fp32 and under bf16
  autocast;
- (b) the pretraining loop (`models.training.pretrain` on the real images, sampling, augmentation
  and host-side copies included) for `transfer`, `protonet`, `mtl-protonet` and `mtl-reptile`
  with Table 1's fair recipe, in image passes per second;
- (c) the loop's share of its ceiling: the ceiling of an algorithm is the bare step's time for
  each forward/backward batch one of its iterations runs (Reptile: `inner_steps` fp32 steps on a
  task's images; ProtoNet: one batch of a task's images; the transfer half: one mixed-class
  batch), so (c) = ceiling time / loop time per iteration.

Every timing is the best of `--rounds` rounds, fp32 and bf16 alternating within a round, so that
load changes hit both alike; the load average is recorded at the start and the end.

    python -m benchmarks.speed.pretraining [--threads 1] [--rounds 3] [--out benchmarks/results/speed-pretraining.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.harness import git_commit, machine_description
from benchmarks.table1 import PROFILES, method_config
from models.config import PretrainConfig
from models.data import ImageSet, data_root
from models.loaders import load_dataset
from models.network import build_metanet
from models.precision import autocast
from models.training import Progress, pretrain

ALGORITHMS = ["transfer", "protonet", "mtl-protonet", "mtl-reptile"]
PRECISIONS = ["fp32", "bf16"]
# name -> (profile its recipe comes from, data set path under the data root, size, channels,
# algorithms): the fair recipe's batches (5-way episodes of 50 images, mixed batches of 64) and
# the built-in models' 20-way episodes (200 images).
INPUTS: dict[str, tuple[tuple[str, str], tuple[str, ...], int, int, list[str]]] = {
    "28x28 gray": (("omniglot", "fair"), ("omniglot", "images_background.npz"), 28, 1, ALGORITHMS),
    "28x28 gray, 20-way episodes": (("omniglot", "builtin"), ("omniglot", "images_background.npz"),
                                    28, 1, ["protonet", "mtl-protonet"]),
    "84x84 RGB": (("miniimagenet-lite", "fair"), ("miniimagenet-lite", "train"), 84, 3, ALGORITHMS),
    "84x84 RGB, 20-way episodes": (("miniimagenet-lite", "builtin"), ("miniimagenet-lite", "train"),
                                   84, 3, ["protonet", "mtl-protonet"]),
}


def forward_batches(config: PretrainConfig) -> list[tuple[int, bool]]:
    """The forward/backward passes one iteration of `config` runs: (batch size, whether it runs
    in the config's precision). Reptile's inner steps run in fp32 whatever the precision
    (`models.precision.full_precision`), so their ceiling is the fp32 step's."""
    task = config.ways * (config.shots + config.queries)
    batches: list[tuple[int, bool]] = []
    if config.meta_weight > 0:
        if config.meta_learner == "protonet":
            batches += [(task, True)] * config.meta_batch
        elif config.meta_learner == "reptile":
            batches += [(task, False)] * (config.meta_batch * config.inner_steps)
        else:
            raise ValueError(f"no ceiling model for {config.algorithm}")
    if config.transfer_weight > 0:
        batches.append((config.transfer_batch or config.meta_batch * task, True))
    return batches


def bare_step_seconds(size: int, channels: int, batch: int, precision: str, classes: int,
                      repeats: int = 10) -> float:
    """Median-free best time of one forward + backward + SGD step on random tensors."""
    net = build_metanet(backbone="conv4", filters=32, channels=channels, image_size=size, meta_ways=5,
                        num_base_classes=classes, mean=[0.5] * channels, std=[0.25] * channels,
                        transfer_head="standard")
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, channels, size, size)
    y = torch.randint(0, classes, (batch,))
    device = torch.device("cpu")
    best = float("inf")
    for r in range(repeats + 2):  # two warm-up steps: allocator and oneDNN kernel caches
        t0 = time.perf_counter()
        with autocast(precision, device):
            loss = F.cross_entropy(net(x, head="transfer"), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if r >= 2:
            best = min(best, time.perf_counter() - t0)
    return best


def loop_passes_per_second(config: PretrainConfig, data: ImageSet, seconds: float) -> float:
    """Image passes per second of `pretrain` itself, after its first iterations (warm-up)."""
    # Enough iterations for about `seconds` at a rough guess, timed from the third one on.
    guess = 4000 if config.image_size <= 28 else 400
    iterations = max(6, int(seconds * guess / config.passes_per_iteration()))
    config = replace(config, iterations=iterations)
    marks: dict[int, float] = {}

    def on_progress(p: Progress) -> None:
        marks[p.iteration] = time.perf_counter()

    pretrain(config, data, device="cpu", progress=on_progress)
    first = 2
    return config.passes_per_iteration() * (iterations - first) / (marks[iterations] - marks[first])


def measure(rounds: int, seconds: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    loaded: dict[tuple[str, ...], ImageSet] = {}
    for name, (profile_key, path, size, channels, algorithms) in INPUTS.items():
        if path not in loaded:
            loaded[path] = load_dataset(data_root().joinpath(*path), image_size=size, channels=channels)
        data = loaded[path]
        profile = PROFILES[profile_key]
        configs = {a: method_config(a, profile) for a in algorithms}
        batches = sorted({b for c in configs.values() for b, _ in forward_batches(c)})
        bare: dict[tuple[int, str], float] = {}
        loop: dict[tuple[str, str], float] = {}
        for _ in range(rounds):
            for batch in batches:
                for precision in PRECISIONS:
                    t = bare_step_seconds(size, channels, batch, precision, data.num_classes)
                    bare[(batch, precision)] = min(bare.get((batch, precision), t), t)
            for algorithm, config in configs.items():
                for precision in PRECISIONS:
                    rate = loop_passes_per_second(replace(config, precision=precision), data, seconds)
                    loop[(algorithm, precision)] = max(loop.get((algorithm, precision), rate), rate)
        for batch in batches:
            rows.append({"input": name, "kind": "bare step", "batch": batch,
                         **{f"{p}_images_per_s": round(batch / bare[(batch, p)], 1) for p in PRECISIONS},
                         "bf16_speedup": round(bare[(batch, "fp32")] / bare[(batch, "bf16")], 2)})
        for algorithm, config in configs.items():
            row: dict[str, Any] = {"input": name, "kind": "pretraining loop", "algorithm": algorithm,
                                   "passes_per_iteration": config.passes_per_iteration(),
                                   "forward_batches": [b for b, _ in forward_batches(config)],
                                   "fp32_in_bf16_runs": [b for b, own in forward_batches(config) if not own]}
            for p in PRECISIONS:
                ceiling_s = sum(bare[(b, p if own else "fp32")] for b, own in forward_batches(config))
                ceiling = config.passes_per_iteration() / ceiling_s
                row[f"{p}_passes_per_s"] = round(loop[(algorithm, p)], 1)
                row[f"{p}_ceiling_passes_per_s"] = round(ceiling, 1)
                row[f"{p}_share_of_ceiling"] = round(loop[(algorithm, p)] / ceiling, 2)
            row["bf16_speedup"] = round(loop[(algorithm, "bf16")] / loop[(algorithm, "fp32")], 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def rescore(path: Path) -> None:
    """Recompute a report's shares of the ceiling from its own bare-step rows with this code's
    ceiling model (its measurements unchanged), and say so in the report."""
    report = json.loads(path.read_text())
    for name, (profile_key, _, _, _, _) in INPUTS.items():
        bare = {(r["batch"], p): r["batch"] / r[f"{p}_images_per_s"] for r in report["rows"]
                if r["input"] == name and r["kind"] == "bare step" for p in PRECISIONS}
        for row in report["rows"]:
            if row["input"] != name or row["kind"] != "pretraining loop":
                continue
            config = method_config(row["algorithm"], PROFILES[profile_key])
            row["fp32_in_bf16_runs"] = [b for b, own in forward_batches(config) if not own]
            for p in PRECISIONS:
                ceiling = config.passes_per_iteration() / sum(
                    bare[(b, p if own else "fp32")] for b, own in forward_batches(config))
                row[f"{p}_ceiling_passes_per_s"] = round(ceiling, 1)
                row[f"{p}_share_of_ceiling"] = round(row[f"{p}_passes_per_s"] / ceiling, 2)
    report["rescored"] = ("shares recomputed from this run's bare-step rows with the ceiling model "
                          "of commit " + git_commit() + ": `python -m benchmarks.speed.pretraining "
                          f"--rescore {path}`")
    path.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best is kept")
    p.add_argument("--seconds", type=float, default=4.0, help="rough length of each loop timing")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/speed-pretraining.json"))
    p.add_argument("--rescore", type=Path, default=None,
                   help="instead of measuring, recompute this report's shares of the ceiling")
    args = p.parse_args()
    if args.rescore:
        rescore(args.rescore)
        return
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()
    rows = measure(args.rounds, args.seconds)
    report = {
        "benchmark": "pretraining throughput against the bare step (the ceiling), fp32 and bf16",
        "network": "conv4, 32 filters, channels-last",
        "recipe": "Table 1's fair recipe (benchmarks/table1/profiles.py FAIR_METHODS; the 20-way rows: its "
                  "builtin profiles), no validation curve",
        "machine": machine_description(), "commit": git_commit(),
        "command": f"python -m benchmarks.speed.pretraining --threads {args.threads} "
                   f"--rounds {args.rounds} --seconds {args.seconds:g}",
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "note": "best of the rounds; the share of the ceiling is the loop's passes per second over "
                "the bare step's at the iteration's own batch sizes",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
