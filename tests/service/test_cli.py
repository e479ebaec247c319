"""The service's CLI: migrate, keys create, worker options, and `mtl serve` (embedded) starting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import ServeProcess
from tests.service.conftest import REPO

# Real processes or long runs: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow


def mtl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def embedded_env(tmp_path: Path, builtin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MTL_") or k in ("MTL_DATA_ROOT",)}
    env.update(MTL_DATA_DIR=str(tmp_path / "data"), MTL_BUILTIN_MODELS_DIR=str(builtin_dir))
    return env


def test_migrate_keys_and_worker_options(tmp_path: Path, builtin_dir: Path) -> None:
    env = embedded_env(tmp_path, builtin_dir)
    r = mtl("keys", "create", "--tenant", "acme", env=env)
    assert r.returncode == 2 and "mtl migrate" in r.stderr  # no database yet: one clear line
    r = mtl("migrate", env=env)
    assert r.returncode == 0, r.stderr
    assert "revision head" in r.stdout
    r = mtl("keys", "create", "--tenant", "acme", "--admin", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("mtl_") and len(r.stdout.strip()) > 30
    r = mtl("keys", "create", "--tenant", "bad tenant!", env=env)
    assert r.returncode == 2 and "--tenant" in r.stderr
    # Without MTL_DATA_DIR, from a folder below the service's: the nearest var/ with a database.
    served = tmp_path / "repo"
    (served / "deep" / "er").mkdir(parents=True)
    bare = {k: v for k, v in env.items() if k != "MTL_DATA_DIR"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "acme"],
                       env={**bare, "PYTHONPATH": str(REPO)}, cwd=served / "deep" / "er",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no service database in" in r.stderr and "var/ above" in r.stderr
    assert not (served / "deep" / "er" / "var").exists()  # no second, empty database
    r = mtl("migrate", env={**env, "MTL_DATA_DIR": str(served / "var")})
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--tenant", "acme"],
                       env={**bare, "PYTHONPATH": str(REPO)}, cwd=served / "deep" / "er",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("mtl_"), r.stderr
    assert f"the service's data folder: {served / 'var'}" in r.stderr
    r = mtl("worker", "--queues", "gpu", env=env)
    assert r.returncode == 2 and "unknown queue" in r.stderr
    # A worker without the API's settings would quietly use ./var and never see a job.
    bare = {k: v for k, v in env.items() if k != "MTL_DATA_DIR"}
    r = mtl("worker", env=bare)
    assert r.returncode == 2 and "MTL_DATA_DIR" in r.stderr


def start_serve(env: dict[str, str], log: Path, *extra: str) -> ServeProcess:
    """`mtl serve` on a free port, once /readyz says ready."""
    return ServeProcess(env, log, *extra).wait_ready(timeout=90)


def test_serve_embedded_starts_migrated_with_builtin_models(tmp_path: Path,
                                                            builtin_dir: Path) -> None:
    env = {**embedded_env(tmp_path, builtin_dir), "MTL_TORCH_THREADS": "3"}
    log = tmp_path / "serve.log"
    serve = start_serve(env, log)
    proc, url = serve.proc, serve.url
    # One line for a person: where the console is and how to get a key.
    assert f"the console is at {url}/" in log.read_text()
    # The port taken: a second `mtl serve` says so in one line and exits 2, naming a way out.
    taken = mtl("serve", "--port", url.rsplit(":", 1)[1], env=env)
    assert taken.returncode == 2, taken.stderr
    assert taken.stderr.startswith(f"error: port {url.rsplit(':', 1)[1]} is already in use")
    assert "make run PORT=" in taken.stderr and len(taken.stderr.splitlines()) == 1
    try:
        # The one thread setting reaches the API and the worker it started (which reports the
        # count torch itself gives).
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready", "torch_threads": 3}
        assert "torch threads 3" in log.read_text()
        key = mtl("keys", "create", "--tenant", "acme", env=env).stdout.strip()
        models = httpx.get(f"{url}/v1/base-models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200
        assert "handwriting" in {m["id"] for m in models.json()["data"]}
        assert (tmp_path / "data" / "mtl.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def test_serve_supervises_its_worker(tmp_path: Path, builtin_dir: Path) -> None:
    """The embedded worker is killed: /readyz turns 503 within seconds, the worker is restarted
    and the service is ready again. `mtl serve` is killed: its worker does not outlive it."""
    from app.infra.embedded import ready_file
    from app.infra.settings import Settings

    env = embedded_env(tmp_path, builtin_dir)
    ready = ready_file(Settings(data_dir=tmp_path / "data"))
    log = tmp_path / "serve.log"
    serve = start_serve(env, log)
    proc, url = serve.proc, serve.url
    try:
        first = int(ready.read_text())
        os.kill(first, signal.SIGKILL)  # as the kernel's OOM killer does
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
            assert time.monotonic() < deadline, "/readyz still 200 with the worker dead"
            time.sleep(0.05)
        assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200  # alive, not ready
        serve.wait_ready(timeout=90)
        second = int(ready.read_text())
        assert second != first and alive(second)

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(second):
            assert time.monotonic() < deadline, "the worker outlived mtl serve"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        leftover = int(ready.read_text())
        if alive(leftover):  # only on failure: never leave a worker behind
            os.kill(leftover, signal.SIGKILL)


def api_processes(pid: int) -> list[int]:
    """The API processes uvicorn spawned for `mtl serve` (pid): its running children started as
    multiprocessing workers (not its worker, nor multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"--multiprocessing-fork" in command:
            found.append(int(stat.parent.name))
    return found


def test_serve_with_several_api_processes(tmp_path: Path, builtin_dir: Path) -> None:
    """`--api-processes 2`: two API processes on one port beside one worker; their /readyz
    follows that worker (killed: 503, restarted: 200); a request with a key works whichever
    process answers; `mtl serve` killed outright takes all of them with it."""
    from app.infra.embedded import ready_file
    from app.infra.settings import Settings

    env = embedded_env(tmp_path, builtin_dir)
    r = mtl("serve", "--api-processes", "0", env=env)
    assert r.returncode == 2 and "--api-processes: must be 1 to 64, got 0" in r.stderr
    ready = ready_file(Settings(data_dir=tmp_path / "data"))
    log = tmp_path / "serve.log"
    serve = start_serve(env, log, "--api-processes", "2")
    proc, url = serve.proc, serve.url
    spawned: list[int] = []
    try:
        worker = int(ready.read_text())
        spawned = api_processes(proc.pid)
        assert len(spawned) == 2, log.read_text()[-3000:]
        key = mtl("keys", "create", "--tenant", "acme", env=env).stdout.strip()
        for _ in range(8):  # the kernel spreads connections over both processes
            got = httpx.get(f"{url}/v1/base-models", headers={"Authorization": f"Bearer {key}"})
            assert got.status_code == 200

        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
            assert time.monotonic() < deadline, "/readyz still 200 with the worker dead"
            time.sleep(0.05)
        serve.wait_ready(timeout=90)
        assert int(ready.read_text()) != worker

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        survivors = [*spawned, int(ready.read_text())]
        deadline = time.monotonic() + 15
        while any(alive(p) for p in survivors):
            assert time.monotonic() < deadline, "an API process or the worker outlived mtl serve"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in [*spawned, int(ready.read_text())]:
            if alive(pid):  # only on failure: never leave a process behind
                os.kill(pid, signal.SIGKILL)
