"""Real processes for the service tests: a worker (`mtl worker`) with a test's settings, a private
Redis that can be crashed, waiting for a job, a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app.infra.settings import Settings
from benchmarks.harness import free_port

__all__ = ["RedisServer", "WorkerProcess", "free_port", "wait_for_job"]

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`mtl worker` in a subprocess with the test's settings."""

    def __init__(self, settings: Settings, log: Path, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "MTL_DATA_DIR": str(settings.data_dir),
               "MTL_BUILTIN_MODELS_DIR": str(settings.resolved_builtin_dir),
               "MTL_WORKER_DEVICE": "cpu", "MTL_CHECKPOINT_EVERY_S": "1",
               "MTL_JOB_STALE_AFTER_S": "3", "MTL_RECOVERY_INTERVAL_S": "1"}
        for name, value in (("MTL_DATABASE_URL", settings.database_url),
                            ("MTL_BROKER_URL", settings.broker_url)):
            if value:
                env[name] = value
            else:
                env.pop(name, None)
        env.update(extra_env or {})
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=env,
                                     cwd=REPO, stdout=self._fh, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._fh.close()


def wait_for_job(client: Any, headers: dict[str, str], job_id: str, *, timeout: float = 240,
                 until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                 log: Path | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in until:
            return dict(job)
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout} s: {job}\n{tail}")


class RedisServer:
    """A `redis-server` of the test's own on a free port, without persistence (as a Redis without
    AOF behaves after a crash): restarting it loses every queued message. Never the shared one."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # a crash: nothing is saved
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def llen(self, queue: str) -> int:
        import redis

        return int(redis.Redis.from_url(self.url).llen(queue))
