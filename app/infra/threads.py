"""Compute threads per process: every process (API, worker, training CLI commands, tests) sets its
torch thread count from one setting, `MTL_TORCH_THREADS`, so the processes of one machine share
its cores instead of each taking all of them and fighting (issue 13: a 30-step adaptation took
0.2-0.6 s with 1 thread and 2.3-6.6 s with 2 when two processes ran on 2 cores)."""

from __future__ import annotations

import os
import sys

# The variables the math libraries torch loads read once, when they are loaded.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_torch_threads(cores: int | None = None, processes: int = 2) -> int:
    """The cores divided between the processes `mtl serve` starts: its API processes (one by
    default) and its worker."""
    return max(1, (available_cores() if cores is None else cores) // processes)


def limit_threads(threads: int) -> None:
    """Use `threads` compute threads in this process: the environment, read when torch's OpenMP
    is loaded and by child processes, and torch itself when it is already imported (OpenMP's
    setting is per thread: the calling thread's, so call this before torch is imported wherever
    other threads run torch, as the API's predict threads do). Torch is not imported here, so the
    API still pays for it only on its first predict."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
