"""The worker `mtl serve` runs beside the API: started, watched and restarted by the API process.

- While the worker is down or still starting, `/readyz` answers 503 (`problem()`), so a load
  balancer or an operator sees it; the supervisor restarts it after a short pause.
- A worker that keeps dying (more than `max_restarts` times in `window_s`) is given up on, and
  `mtl serve` exits non-zero instead of serving an API whose jobs would never run.
- The worker watches its parent (`python -m worker --parent-pid`) and exits when `mtl serve` is gone,
  however it went (SIGKILL included), so a restart never finds an orphan worker beside the new one.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from app.infra.settings import Settings

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        on_give_up: Callable[[], None],
        max_restarts: int = 5,
        window_s: float = 60.0,
        restart_pause_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.ready_file = ready_file(settings)
        self.on_give_up = on_give_up
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.restart_pause_s = restart_pause_s
        self.gave_up = False
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._deaths: deque[float] = deque()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, daemon=True, name="mtl-worker-sup")

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self._lock:
            self._proc = self._spawn()
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # The worker must use this API's data directory whatever its own current directory.
        # Its threads too: the default gives the API and this worker half the cores each.
        env = {**os.environ, "MTL_DATA_DIR": str(self.settings.resolved_data_dir),
               "MTL_TORCH_THREADS": str(self.settings.resolved_torch_threads)}
        args = [sys.executable, "-m", "worker", "--parent-pid", str(os.getpid()),
                "--ready-file", str(self.ready_file)]
        return subprocess.Popen(args, env=env)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._proc is None else self._proc.pid

    def problem(self) -> str | None:
        """None when the worker runs and has said it is ready, else why not (for /readyz)."""
        with self._lock:
            proc = self._proc
        if self.gave_up:
            return "the embedded worker keeps dying; mtl serve is stopping"
        if proc is None or proc.poll() is not None:
            return "the embedded worker is not running (it is being restarted)"
        if read_ready_pid(self.ready_file) != proc.pid:
            return "the embedded worker is starting"
        return None

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - self.window_s:
                self._deaths.popleft()
            if len(self._deaths) > self.max_restarts:
                log.error("the embedded worker died %d times in %.0f s; giving up",
                          len(self._deaths), self.window_s)
                self.gave_up = True
                self.on_give_up()
                return
            log.error("the embedded worker exited with status %s; restarting it", proc.returncode)
            if self._stopping.wait(self.restart_pause_s):
                return
            with self._lock:
                self._proc = self._spawn()
                self.restarts += 1

    def stop(self, timeout: float = 30.0) -> None:
        """Stop supervising, then stop the worker (SIGTERM; SIGKILL after `timeout`)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class WorkerProbe:
    """The embedded worker as seen from an API process that did not start it: with
    `mtl serve --api-processes N` (N > 1) the worker is the supervisor's child, and each API
    process reads the file the worker writes, with its pid, once it is ready."""

    def __init__(self, ready_file: Path) -> None:
        self.ready_file = ready_file

    def problem(self) -> str | None:
        pid = read_ready_pid(self.ready_file)
        if pid is None:
            return "the embedded worker is starting"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "the embedded worker is not running (it is being restarted)"
        except PermissionError:  # alive, under another user
            pass
        return None


def read_ready_pid(path: Path) -> int | None:
    """The pid the worker wrote into its ready file, or None while there is none."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def ready_file(settings: Settings) -> Path:
    return settings.resolved_data_dir / "embedded-worker.ready"


def exit_with_parent(
    parent_pid: int, interval_s: float = 0.5, *, graceful: bool = False, who: str = "the embedded worker"
) -> None:
    """Exit when the process that started this one is gone (it was killed, and this process was
    handed to init): at once (the worker: jobs it was running are recovered like a crash), or
    `graceful`ly by SIGTERM to itself (an API process of `mtl serve --api-processes N`, which
    would otherwise keep answering on the port with nobody supervising it)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        log.error("mtl serve (pid %d) is gone; %s exits", parent_pid, who)
        if graceful:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mtl-parent-watch").start()
