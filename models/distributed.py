"""Pretraining on several processes with torch.distributed: gloo on CPUs, NCCL on GPUs.

Every process samples the whole meta-batch from the same seeded generators (so the task stream is
the one a single process draws, whatever the process count) and computes its contiguous share of
the tasks and of the transfer step's parts. The directions (ProtoNet's and the transfer step's
gradients, before their optimisers) are averaged with one all-reduce each, weighted by the tasks
or images behind them, and every process applies the same update, so weights, momentum buffers
and Adam moments stay identical everywhere. Batch-norm running statistics, updated in place by
every forward pass, are recombined after each half of a step into the values one process's
sequence of updates gives (`GroupSync.batchnorm`). The first process writes checkpoints; every
process resumes from them, with any process count.

What equals what: for the same config and seed, a run on N processes gives the single-process
run's weights and statistics to floating-point tolerance, for every algorithm. Each task's inner
loop and ProtoNet loss see only that task's images, so sharding tasks changes nothing. The
transfer step's batch-norm statistics do depend on which images share a forward pass: they come
from `transfer_ghost_batches` parts of its batch (default 1), on one process and on N alike, the
parts divided among the processes. With 1 part the first process computes the whole transfer
step (exact, but that half is not spread); `transfer_ghost_batches` N, or a multiple, spreads it.

Three ways in: `launch` (spawns the other processes itself: `mtl pretrain --nproc N`, the worker),
`pretrain_in_group` (one process of a group started elsewhere), and
`torchrun --nproc_per_node N -m models.distributed ...` (`main`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from models import algorithms as alg
from models.config import PretrainConfig
from models.data import ImageSet
from models.errors import ConfigError, MTLError, TrainingCancelled
from models.loaders import load_dataset
from models.network import MetaNet
from models.training import (
    PretrainResult,
    Progress,
    Sync,
    pretrain,
    resolve_device,
    transfer_part_count,
)

T = TypeVar("T")


class GroupSync(Sync):
    """`Sync` over the default process group."""

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        # NCCL reduces tensors on this process's GPU, gloo on the CPU.
        self.device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    def part(self, items: Sequence[T]) -> Sequence[T]:
        n = len(items)
        return items[self.rank * n // self.world : (self.rank + 1) * n // self.world]

    def mean(self, tensors: alg.Params, loss: float, weight: float) -> tuple[alg.Params, float]:
        names = list(tensors)
        dtype = tensors[names[0]].dtype
        flat = torch.cat([tensors[k].detach().reshape(-1).to(self.device) * weight for k in names]
                         + [torch.tensor([loss * weight, weight], dtype=dtype, device=self.device)])
        dist.all_reduce(flat)
        total = flat[-1]
        out, offset = {}, 0
        for k in names:
            t = tensors[k]
            out[k] = (flat[offset : offset + t.numel()] / total).view_as(t).to(t.device)
            offset += t.numel()
        return out, float(flat[-2] / total)

    @contextmanager
    def random_stream(self, rng: np.random.Generator, tasks: Sequence[alg.Task],
                      config: PretrainConfig) -> Iterator[None]:
        """Skips the draws of the tasks before this process's share, then of those after it."""
        n = len(tasks)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        _skip_draws(rng, tasks[:lo], config)
        yield
        _skip_draws(rng, tasks[hi:], config)

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on any."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    @contextmanager
    def batchnorm(self, net: MetaNet, *, mean_over: int | None = None) -> Iterator[None]:
        """A forward pass in train mode sets r <- (1 - m) r + m s; after k of them from r0,
        r = (1 - m)^k r0 + c. One process runs the processes' shares one after another, so
        it ends at (1 - m)^K r0 + sum_p (1 - m)^(passes after p's) c_p: one all-reduce of the
        c_p terms. The vectorised meta-batch keeps its tasks' mean instead: a weighted mean."""
        layers = _running_stats(net)
        start = [(mean.to(torch.float64, copy=True), var.to(torch.float64, copy=True), int(count))
                 for _, mean, var, count in layers]
        yield
        if not layers:
            return
        passes = int(layers[0][3]) - start[0][2]
        counts = torch.zeros(2 * self.world, dtype=torch.float64, device=self.device)
        counts[self.rank] = passes
        counts[self.world + self.rank] = mean_over or 0
        dist.all_reduce(counts)
        k = [int(v) for v in counts[: self.world].tolist()]
        tasks = float(counts[self.world :].sum())
        later, total = sum(k[self.rank + 1 :]), sum(k)
        terms = []
        for (decay, mean, var, _), (mean0, var0, _) in zip(layers, start, strict=True):
            for now, r0 in ((mean, mean0), (var, var0)):
                term = now.double() * mean_over if mean_over is not None else (
                    decay**later * (now.double() - decay**passes * r0))
                terms.append(term.to(self.device))
        flat = torch.cat(terms)
        dist.all_reduce(flat)
        offset = 0
        with torch.no_grad():
            for (decay, mean, var, count), (mean0, var0, count0) in zip(layers, start, strict=True):
                for buf, r0 in ((mean, mean0), (var, var0)):
                    summed = flat[offset : offset + buf.numel()].view_as(buf).to(buf.device)
                    offset += buf.numel()
                    buf.copy_(summed / tasks if mean_over is not None else decay**total * r0 + summed)
                # The vectorised meta-batch keeps one task's count, the others the sum.
                count.fill_(count0 + (max(k) if mean_over is not None else total))


def _running_stats(net: nn.Module) -> list[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(1 - momentum, running mean, running var, batches tracked) of each batch-norm layer."""
    out = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            if m.momentum is None:
                raise ConfigError("batch norm with a cumulative average (momentum None) cannot "
                                  "be spread over processes")
            assert m.running_mean is not None and m.running_var is not None
            assert m.num_batches_tracked is not None
            out.append((1.0 - m.momentum, m.running_mean, m.running_var, m.num_batches_tracked))
    return out


def _skip_draws(rng: np.random.Generator, tasks: Sequence[alg.Task], config: PretrainConfig) -> None:
    """Draw from `rng` what `algorithms.inner_loop` draws for `tasks` (a permutation of a task's
    images at the start and each time a pass over them ends), discarding it."""
    learner, batch = config.meta_learner, config.inner_batch
    if learner == "protonet" or config.vectorise_tasks or batch <= 0:
        return  # no mini-batched inner loop: nothing drawn
    for task in tasks:
        n = len(task.support_y) + (len(task.query_y) if learner == "reptile" else 0)
        if batch >= n:
            continue
        rng.permutation(n)
        cursor = 0
        for _ in range(config.inner_steps):
            if cursor + batch > n:
                rng.permutation(n)
                cursor = 0
            cursor += batch


def pretrain_in_group(
    config: PretrainConfig,
    data: ImageSet,
    *,
    device: torch.device,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    validate: Callable[[MetaNet], dict[str, float]] | None = None,
    **options: Any,
) -> PretrainResult:
    """`models.training.pretrain` (its other keyword `options` too) as one process of the default
    process group: every process calls it with the same config and data; the first process's
    `progress`, `should_stop` and `validate` count (the others' are ignored) and it alone writes
    `out_dir`."""
    if not dist.is_initialized():
        raise ConfigError("pretrain_in_group needs torch.distributed initialised (torchrun, or launch)")
    sync = GroupSync(device)
    first = sync.rank == 0

    def stop() -> bool:
        # Every process asks at the same point of every iteration, so all stop together.
        return sync.any(first and should_stop is not None and should_stop())

    return pretrain(replace(config, processes=sync.world), data, device=device,
                    progress=progress if first else None, should_stop=stop,
                    validate=validate if first else None, sync=sync, **options)


def process_devices(device: str | torch.device, processes: int) -> list[torch.device]:
    """One device per process: the CPU for all (gloo), or GPUs 0..N-1, one each (NCCL)."""
    resolved = resolve_device(device) if isinstance(device, str) else device
    if resolved.type == "cpu":
        return [resolved] * processes
    if resolved.type != "cuda":
        raise ConfigError(f"device {resolved} cannot be shared by processes; use cpu or cuda")
    count = torch.cuda.device_count()
    if processes > count:
        raise ConfigError(f"{processes} processes on GPUs need {processes} GPUs (one each); this "
                          f"machine has {count} (device cpu runs them on CPU cores)")
    return [torch.device("cuda", i) for i in range(processes)]


def spread_warnings(config: PretrainConfig, processes: int, device: str | torch.device = "cpu") -> list[str]:
    """What a user should know before spreading `config` over `processes` (nothing wrong with
    the result, which is the single-process one either way, but time or cores wasted)."""
    if processes <= 1:
        return []
    warnings = []
    meta = config.meta_batch if config.meta_weight > 0 else 0
    transfer = transfer_part_count(config)
    work = max(meta, transfer)
    if processes > work:
        warnings.append(f"{processes} processes share {meta} task(s) and {transfer} transfer part(s) "
                        f"an iteration: {processes - work} will wait idle (raise --meta-batch or "
                        "--transfer-ghost-batches, or use fewer processes)")
    resolved = resolve_device(device) if isinstance(device, str) else device
    cores = os.cpu_count() or 1
    if resolved.type == "cpu" and processes > cores:
        warnings.append(f"{processes} processes on {cores} CPU core(s): they take turns, slower "
                        "than one process with the same result")
    return warnings


def _join_group(store_path: str, rank: int, world: int, device: torch.device, timeout_s: float) -> None:
    """Join the group of `launch`'s processes, all on this machine."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "lo" in {name for _, name in socket.if_nameindex()}:
        # gloo otherwise picks the interface the host name resolves to, which a container may
        # not have; one machine's processes need only loopback.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    store = dist.FileStore(store_path, world)
    store.set(f"started/{rank}", "1")
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world,
        timeout=timedelta(seconds=timeout_s))


def _wait_for_start(children: mp.ProcessContext, store_path: str, world: int, timeout_s: float) -> None:
    """Until every spawned process is about to join the group. One that ended first raises its
    error here; without this wait, the group would wait for it until the timeout."""
    store = dist.FileStore(store_path, world)
    keys = [f"started/{rank}" for rank in range(1, world)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        if not all(p.is_alive() for p in children.processes):
            children.join(timeout=5)  # raises the error of a process that failed
            raise RuntimeError("a pretraining process ended before joining the others")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pretraining processes did not start within {timeout_s:.0f} s")
        time.sleep(0.1)


def _other_process(
    index: int, store_path: str, devices: list[torch.device], threads: int, config: PretrainConfig,
    data: ImageSet, out_dir: Path | str | None, resume: bool, timeout_s: float,
) -> None:
    """Processes 1..N-1 of `launch`, in spawned children."""
    rank = index + 1
    torch.set_num_threads(threads)
    _join_group(store_path, rank, len(devices), devices[rank], timeout_s)
    # Every process stops at the same iteration; the first one reports a cancel.
    with group_run(cancel_is_done=True):
        pretrain_in_group(config, data, device=devices[rank], out_dir=out_dir, resume=resume)
    end_spawned_process()


@contextmanager
def group_run(*, cancel_is_done: bool = False) -> Iterator[None]:
    """Run one process's part, then leave the process group. After a run every process
    finished (or, with `cancel_is_done`, a cancel, swallowed), all leave together, a barrier
    first: a gloo process whose peers had already torn down their connections sometimes aborted
    at exit ("terminate called without an active exception"). After a failure it leaves at
    once."""
    completed = False
    try:
        yield
        completed = True
    except TrainingCancelled:
        if not cancel_is_done:
            raise
        completed = True
    finally:
        if completed:
            dist.barrier()
        dist.destroy_process_group()


def end_spawned_process() -> None:
    """End a spawned process that finished its work without running C++ destructors at
    interpreter exit (the other place gloo's connection threads aborted the process)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(
    config: PretrainConfig,
    data: ImageSet,
    *,
    processes: int | None = None,
    device: str | torch.device = "auto",
    timeout_s: float = 1800.0,
    **options: Any,
) -> PretrainResult:
    """`models.training.pretrain` (its keyword `options` too: out_dir, resume, progress,
    should_stop, validate...) on `processes` processes (default `config.processes`): this
    process is the first (it calls `progress`, `should_stop` and `validate`, and writes
    `out_dir`); the others are spawned, receive `data` through shared memory, and end with it.

    On CPUs they share the cores (torch threads divided among them) over gloo; on GPUs each
    takes one (GPUs 0..N-1, as CUDA_VISIBLE_DEVICES numbers them) over NCCL. One process is
    plain `pretrain`. A collective that waits longer than `timeout_s` (a process lost) fails.
    """
    processes = config.processes if processes is None else processes
    if processes < 1:
        raise ConfigError(f"processes must be at least 1, got {processes}")
    config = replace(config, processes=processes)
    if processes == 1:
        return pretrain(config, data, device=device, **options)
    out_dir, resume = options.get("out_dir"), options.get("resume", False)
    devices = process_devices(device, processes)
    before = torch.get_num_threads()
    threads = max(1, before // processes) if devices[0].type == "cpu" else before
    with tempfile.TemporaryDirectory(prefix="mtl-distributed-") as tmp:
        store = os.path.join(tmp, "store")
        children = mp.start_processes(
            _other_process, args=(store, devices, threads, config, data, out_dir, resume, timeout_s),
            nprocs=processes - 1, join=False, start_method="spawn")
        torch.set_num_threads(threads)
        try:
            _wait_for_start(children, store, processes, timeout_s)
            _join_group(store, 0, processes, devices[0], timeout_s)
            with group_run():
                result = pretrain_in_group(config, data, device=devices[0], **options)
            while not children.join():
                pass
        except MTLError:
            _end(children)  # they stop alike (a cancel, a divergence) or are stuck waiting
            raise
        except BaseException as exc:
            # A lost connection here is the symptom of another process's error: raise that one.
            lost = isinstance(exc, dist.DistError) or "Connection closed" in str(exc)
            try:
                if lost:
                    children.join(timeout=30)
            except Exception as child_exc:
                raise child_exc from exc
            finally:
                _end(children)
            raise
        finally:
            torch.set_num_threads(before)
    return result


def _end(children: mp.ProcessContext) -> None:
    for p in children.processes:
        if p.is_alive():
            p.terminate()
        p.join(10)


# ----------------------------------------------------------------------------- torchrun


def _config_from_json(text: str) -> PretrainConfig:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError("--config must be a JSON object of PretrainConfig fields")
    unknown = sorted(set(values) - {f.name for f in fields(PretrainConfig)})
    if unknown:
        raise ConfigError(f"unknown PretrainConfig field(s): {', '.join(unknown)}")
    return PretrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """One process of a run under torchrun, e.g. on a node with 8 GPUs:
    `torchrun --nproc_per_node 8 -m models.distributed --dataset PATH --out DIR --config JSON`."""
    p = argparse.ArgumentParser(prog="python -m models.distributed", description=main.__doc__)
    p.add_argument("--dataset", type=Path, required=True, help="as mtl pretrain --dataset")
    p.add_argument("--out", type=Path, required=True, help="checkpoint folder (the first process writes it)")
    p.add_argument("--config", default="{}",
                   help="PretrainConfig fields as a JSON object, or @FILE holding one "
                        "(a card's hyperparameters will do)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (one GPU per process)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds between checkpoints")
    args = p.parse_args(argv)
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        config = _config_from_json(args.config)
        device = resolve_device(args.device)
        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        data = load_dataset(args.dataset, image_size=config.image_size, channels=config.channels)
        if not dist.is_initialized():  # torchrun's environment: RANK, WORLD_SIZE, MASTER_ADDR...
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        step = max(1, config.iterations // 20)

        def report(pr: Progress) -> None:
            if pr.iteration % step == 0 or pr.iteration == pr.total:
                print(f"iteration {pr.iteration}/{pr.total} loss {pr.loss:.4f} {pr.seconds:.0f} s",
                      file=sys.stderr, flush=True)

        with group_run():
            result = pretrain_in_group(config, data, device=device, out_dir=args.out,
                                       resume=args.resume, checkpoint_every_s=args.checkpoint_every,
                                       progress=report)
    except MTLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"wrote {args.out} ({result.card['training']['seconds']} s on "
              f"{result.card['hyperparameters']['processes']} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
