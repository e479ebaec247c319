"""What the benchmarks share. Running the service for a test, a benchmark or the demo: a free
port, and `mtl serve` as a process of its own, ready once /readyz says so (used by tests/,
scripts/demo.py and benchmarks/speed/). And what every benchmark report records of how it was
made: the commit and the machine (benchmarks/table1/, benchmarks/speed/ and the others)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_description() -> str:
    """The machine, as base-model cards describe it (models.training.machine_description)."""
    import torch

    from models.training import machine_description as describe

    return describe(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceNotReady(RuntimeError):
    """`mtl serve` exited, or did not answer /readyz in time; the message ends with its log."""


class ServeProcess:
    """`mtl serve --port P ...extra` with `env`, run from `cwd` (another checkout serves with its
    own code), its output in `log`. `wait_ready` blocks until /readyz answers 200."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str, cwd: Path = REPO,
                 host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port",
                 str(self.port), *extra], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 120) -> ServeProcess:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceNotReady(f"mtl serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ServiceNotReady(f"mtl serve was not ready in {timeout:.0f} s:\n{self.tail()}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (a graceful shutdown that stops its worker), SIGKILL if that takes too long."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
