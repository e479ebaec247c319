"""Meta-training cost: time per iteration of each algorithm against plain supervised passes.

For every algorithm the same meta-batch of tasks is drawn; the reference is one plain supervised
step (forward, backward, SGD) over all of the iteration's images as one batch, in the same run.
Two ratios are reported:

- `ratio_to_one_step`: iteration time / one supervised step over the same images. Reptile with k
  inner steps is bound to be near k+1 here: it does k+1 times the arithmetic.
- `overhead_per_pass`: iteration time / (the iteration's image passes x the time of one supervised
  pass per image). This is the cost of the meta-learning machinery itself (functional calls,
  per-task loops, parameter arithmetic); the goal is at most 1.25 for Reptile, FOMAML and the MTL
  variants. MAML's second-order backward costs more than a pass by nature; its number is reported.

    python -m benchmarks.speed.training [--device cpu] [--repeats 5] [--out benchmarks/results/speed-training.json]

`--setting l2l` times learn2learn's own Omniglot example configuration instead (28x28, Conv-4 with
64 filters, 5-way 1-shot with 1 query a class, meta-batch 32, 1 inner step, inner lr 0.4) for
MAML and first-order MAML, the per-task loop against the vectorised meta-batch
(`vectorise_tasks`), timed alternately, and writes benchmarks/results/speed-training-l2l.json.
`--threads 1,2` alternates torch thread counts too, and `--formats channels_last,contiguous` the
backbone's memory format (channels-last is what `models.backbones` uses; contiguous is torch's
default), each combination once per round, so that load changes hit all alike. The load average
is recorded at the start and the end. Note that learn2learn's own Omniglot CNN
(`l2l.vision.models.OmniglotCNN`) is not this Conv-4: its convolutions have stride 2 and it has no
max-pooling, about 3.8x fewer multiply-adds per image on 28x28 inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.harness import git_commit, machine_description
from models.backbones import available_backbones, register_backbone
from models.config import PretrainConfig
from models.data import ImageSet, data_root
from models.episodes import EpisodeSampler
from models.loaders import load_dataset
from models.network import build_metanet
from models.training import resolve_device, sample_tasks, train_step

ALGORITHMS = ["transfer", "protonet", "reptile", "fomaml", "maml", "mtl-reptile", "mtl-fomaml", "mtl-maml"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


L2L_FILTERS = 64
L2L_SETTING: dict[str, object] = {"ways": 5, "shots": 1, "queries": 1, "meta_batch": 32,
                                  "inner_steps": 1, "inner_lr": 0.4, "outer_lr": 0.003}


L2L_NETWORK = "l2l-omniglot-cnn"


class _MeanOverPositions(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def register_l2l_network() -> None:
    """learn2learn's Omniglot CNN layout as a backbone: 4 x [conv 3x3 stride 2 padding 1, batch
    norm, ReLU], then the mean over positions (64 features with 64 filters)."""
    if L2L_NETWORK in available_backbones():
        return

    @register_backbone(L2L_NETWORK)
    def l2l_omniglot_cnn(in_channels: int = 1, filters: int = 64, **_: object) -> nn.Module:
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else filters, filters, 3, stride=2, padding=1),
                       nn.BatchNorm2d(filters), nn.ReLU()]
        return nn.Sequential(*layers, _MeanOverPositions())


def measure(data: ImageSet, algorithm: str, device: torch.device, repeats: int, image_size: int,
            channels: int, filters: int, **setting: object) -> dict[str, float | int | str]:
    config = PretrainConfig(**{"algorithm": algorithm, "image_size": image_size, "channels": channels,  # type: ignore[arg-type]
                               "filters": filters, "iterations": 1000, **setting})
    filters = config.filters
    net = build_metanet(backbone=config.backbone, filters=filters, channels=channels, image_size=image_size,
                        meta_ways=config.ways, num_base_classes=data.num_classes, mean=[0.5] * channels,
                        std=[0.25] * channels).to(device)
    sampler = EpisodeSampler(data.labels, ways=config.ways, shots=config.shots, queries=config.queries, seed=0)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    state: dict[str, torch.Tensor] = {}
    sup_opt = torch.optim.SGD(net.parameters(), lr=1e-4)
    iter_times, step_times = [], []
    n_images = 0
    for r in range(repeats + 1):  # the first round warms up allocators and kernels
        tasks = sample_tasks(data, sampler, config, device, gen)
        _sync(device)
        t0 = time.perf_counter()
        train_step(net, tasks, config, iteration=r, rng=rng, state=state)
        _sync(device)
        t1 = time.perf_counter()
        x = torch.cat([t.all_x for t in tasks])
        y = torch.cat([t.base_y for t in tasks])
        _sync(device)
        t2 = time.perf_counter()
        sup_opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x, head="transfer"), y).backward()
        sup_opt.step()
        _sync(device)
        t3 = time.perf_counter()
        n_images = len(x)
        if r > 0:
            iter_times.append(t1 - t0)
            step_times.append(t3 - t2)
    t_iter = statistics.median(iter_times)
    t_step = statistics.median(step_times)
    passes = config.passes_per_iteration()
    return {
        "algorithm": algorithm + (" (vectorised)" if config.vectorise_tasks else ""),
        "images_per_iteration": n_images,
        "passes_per_iteration": passes,
        "iteration_ms": round(1000 * t_iter, 1),
        "supervised_step_ms": round(1000 * t_step, 1),
        "ratio_to_one_step": round(t_iter / t_step, 2),
        "overhead_per_pass": round(t_iter / (t_step * passes / n_images), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--filters", type=int, default=32)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--setting", choices=["default", "l2l"], default="default")
    p.add_argument("--threads", type=lambda v: [int(t) for t in v.split(",")], default=None,
                   help="l2l: torch thread counts to alternate (default: torch's current count)")
    p.add_argument("--formats", type=lambda v: v.split(","), default=["channels_last"],
                   help="l2l: backbone memory formats to alternate: channels_last,contiguous")
    p.add_argument("--rounds", type=int, default=3, help="l2l: alternating rounds")
    p.add_argument("--networks", type=lambda v: v.split(","), default=["conv4"],
                   help=f"l2l: backbones to alternate: conv4 (this project's) and {L2L_NETWORK} "
                        "(learn2learn's Omniglot CNN layout)")
    p.add_argument("--no-vectorised", action="store_true",
                   help="l2l: time the per-task loop only (not the vectorised meta-batch)")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = load_dataset(data_root() / "omniglot" / "images_background.npz", image_size=28, channels=1)
    if args.setting == "l2l":
        l2l(data, device, args.repeats, args.out or Path("benchmarks/results/speed-training-l2l.json"),
            args.threads or [torch.get_num_threads()], args.formats,
            [False] if args.no_vectorised else [False, True], args.rounds, args.networks)
        return
    args.out = args.out or Path("benchmarks/results/speed-training.json")
    rows = [measure(data, a, device, args.repeats, 28, 1, args.filters) for a in ALGORITHMS]
    print(f"{'algorithm':<12} {'passes':>6} {'iter ms':>8} {'step ms':>8} {'x step':>7} {'per pass':>9}")
    for r in rows:
        print(f"{r['algorithm']:<12} {r['passes_per_iteration']:>6} {r['iteration_ms']:>8} "
              f"{r['supervised_step_ms']:>8} {r['ratio_to_one_step']:>7} {r['overhead_per_pass']:>9}")
    report = {"benchmark": "meta-training cost per iteration", "data": "Omniglot background, 28x28",
              "config": "conv4, 5-way, 5 shots + 5 queries per class, meta-batch 5, 5 inner steps",
              "filters": args.filters, "device": str(device), "machine": machine_description(), "commit": git_commit(),
              "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m benchmarks.speed.training --device {args.device} --repeats {args.repeats}",
              "load_average_at_end": os.getloadavg(),
              "note": "ratios compare timings taken alternately in the same process; other jobs were "
                      "running on the machine when the load average exceeds the core count",
              "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


@contextmanager
def memory_format(name: str) -> Iterator[None]:
    """Build and feed backbones in `name` memory format for the duration (a benchmark-only
    switch: `models.backbones` always uses channels-last)."""
    import models.backbones as backbones
    import models.network as network

    if name == "channels_last":
        yield
        return
    if name != "contiguous":
        raise ValueError(f"unknown memory format {name!r}: channels_last or contiguous")
    made, fed = network.create_backbone, network.to_backbone_input
    network.create_backbone = lambda n, **kw: backbones.create_backbone(n, **kw).to(  # type: ignore[assignment]
        memory_format=torch.contiguous_format)
    network.to_backbone_input = lambda x: x.contiguous()  # type: ignore[assignment]
    try:
        yield
    finally:
        network.create_backbone, network.to_backbone_input = made, fed


def l2l(data: ImageSet, device: torch.device, repeats: int, out: Path, threads: list[int],
        formats: list[str], vectorise: list[bool], rounds: int, networks: list[str]) -> None:
    """learn2learn's Omniglot example configuration: the loop and the vectorised meta-batch
    (and any thread counts and memory formats asked for), measured alternately, `rounds`
    rounds, so that load changes hit all alike."""
    if L2L_NETWORK in networks:
        register_l2l_network()
    load_start = os.getloadavg()
    runs = [(a, v, t, f, n) for n in networks for t in threads for f in formats
            for a in ("maml", "fomaml") for v in vectorise]
    rows: dict[tuple[str, bool, int, str, str], list[dict[str, float | int | str]]] = {
        r: [] for r in runs}
    for _ in range(rounds):
        for algorithm, vec, n_threads, fmt, network in runs:
            torch.set_num_threads(n_threads)
            with memory_format(fmt):
                measured = measure(data, algorithm, device, repeats, 28, 1, L2L_FILTERS,
                                   **L2L_SETTING, vectorise_tasks=vec, backbone=network)
            rows[(algorithm, vec, n_threads, fmt, network)].append(
                {**measured, "network": network, "threads": n_threads, "memory_format": fmt,
                 "load_average_1": round(os.getloadavg()[0], 2)})
    summary = []
    for measured_rows in rows.values():
        times = [float(r["iteration_ms"]) for r in measured_rows]
        best = min(measured_rows, key=lambda r: float(r["iteration_ms"]))
        summary.append({**best, "iteration_ms_median_of_rounds": round(statistics.median(times), 1),
                        "iteration_ms_all_rounds": times})
        print(f"{best['network']:<16} {best['algorithm']:<20} {best['threads']} thread(s) "
              f"{best['memory_format']:<13} "
              f"iteration best {best['iteration_ms']} ms, median {statistics.median(times):.1f} ms "
              f"(rounds: {times}), supervised step {best['supervised_step_ms']} ms")
    command = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m "
               f"benchmarks.speed.training --setting l2l --repeats {repeats} --rounds {rounds} "
               f"--threads {','.join(map(str, threads))} --formats {','.join(formats)} "
               f"--networks {','.join(networks)}"
               + ("" if len(vectorise) == 2 else " --no-vectorised"))
    report = {"benchmark": "meta-training cost per iteration, learn2learn's Omniglot example setting",
              "config": {**L2L_SETTING, "filters": L2L_FILTERS}, "device": str(device), "machine": machine_description(),
              "commit": git_commit(), "command": command,
              "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
              "note": f"per combination: the fastest and the median of {rounds} alternating rounds, "
                      "each round the median of `repeats` iterations; learn2learn's OmniglotCNN "
                      "uses stride-2 convolutions without max-pooling (about 3.8x fewer "
                      "multiply-adds than this Conv-4): its times compare with the rows of network "
                      f"{L2L_NETWORK}, that layout in this project's code",
              "rows": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
