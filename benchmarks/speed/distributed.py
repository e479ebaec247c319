"""Distributed pretraining's speed: one run (same config, seed and global meta-batch) on one
process with T threads against N processes with T/N threads each (gloo on CPU cores), or with
`--device cuda` on 1 GPU against N GPUs (NCCL, one each).

    python -m benchmarks.speed.distributed [--processes 2] [--threads 2] [--iterations 40]
        [--repeats 3] [--algorithms mtl-reptile,protonet,transfer] [--device cpu]

The variants alternate (1, N, 1, N, ...) so a change in the machine's load hits both alike, and
the load average is recorded before and after every measurement. The time compared is the
training loop's (the card's `training.seconds`: from the first iteration to the last); the whole
call, with spawning the processes, importing torch in them and building the model, is reported
beside it. Each pair's weights are compared too (float32: see tests/core/test_distributed.py on
why ProtoNet's Adam step amplifies rounding). Omniglot background (MTL_DATA_ROOT), conv4 with 64
filters, 5-way 5-shot 5-query, meta-batch 4, the transfer step in `--processes` ghost batches so
both halves are spread. Writes benchmarks/results/speed-distributed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import git_commit
from benchmarks.speed.report import RESULTS, machine, write_report
from models.config import PretrainConfig
from models.data import ImageSet, data_root
from models.distributed import launch
from models.loaders import load_dataset
from models.training import PretrainResult


def config_for(algorithm: str, args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(algorithm=algorithm, filters=64, image_size=28, channels=1, ways=5,
                          shots=5, queries=5, meta_batch=4, inner_steps=5,
                          transfer_ghost_batches=args.processes, iterations=args.iterations,
                          seed=1)


def run_once(config: PretrainConfig, data: ImageSet, processes: int, threads: int,
             device: str) -> tuple[dict[str, Any], PretrainResult]:
    torch.set_num_threads(threads)  # launch divides these among its processes on CPU
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = launch(config, data, processes=processes, device=device, out_dir=out)
    wall = time.perf_counter() - t0
    return {"processes": processes,
            "threads_each": max(1, threads // processes) if device == "cpu" else threads,
            "loop_s": result.card["training"]["seconds"], "call_s": round(wall, 2),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="CPU: threads of the one process, "
                   "divided among the N processes")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3, help="pairs of measurements per algorithm")
    p.add_argument("--algorithms", default="mtl-reptile,protonet,transfer")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU a process)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    data = load_dataset(data_root() / "omniglot" / "images_background.npz", image_size=28, channels=1)
    before = machine()
    rows: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, Any] = {}
    for algorithm in args.algorithms.split(","):
        config = config_for(algorithm, args)
        rows[algorithm] = []
        for _ in range(args.repeats):
            one, single = run_once(config, data, 1, args.threads, args.device)
            many, spread = run_once(config, data, args.processes, args.threads, args.device)
            a, b = single.net.state_dict(), spread.net.state_dict()
            diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
            rows[algorithm] += [one, {**many, "max_abs_weight_difference": diff}]
            print(f"{algorithm}: 1 process {one['loop_s']} s, {args.processes} processes "
                  f"{many['loop_s']} s (load {one['load_before']} / {many['load_before']})", flush=True)
        loop = {n: statistics.median(r["loop_s"] for r in rows[algorithm] if r["processes"] == n)
                for n in (1, args.processes)}
        summary[algorithm] = {"loop_s_1_process": loop[1],
                              f"loop_s_{args.processes}_processes": loop[args.processes],
                              "speedup": round(loop[1] / loop[args.processes], 3),
                              "iterations": args.iterations}
    report = {
        "benchmark": f"pretraining on 1 process x {args.threads} threads against "
                     f"{args.processes} processes x {max(1, args.threads // args.processes)} threads "
                     f"({args.device}); same config, seed and global meta-batch",
        "command": "python -m benchmarks.speed.distributed " + " ".join(argv or []),
        "commit": git_commit(),
        "machine_before": before, "machine_after": machine(),
        "config": {k: v for k, v in vars(config_for("mtl-reptile", args)).items() if k != "algorithm"},
        "summary": summary, "runs": rows,
    }
    write_report("distributed", report, args.out)
    for algorithm, s in summary.items():
        print(f"{algorithm:>12}: speedup {s['speedup']}x ({s})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
