"""The service's CLI: migrate, keys create, worker options, and `mtl serve` (embedded) starting."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.service.conftest import REPO


def mtl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def embedded_env(tmp_path: Path, builtin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MTL_") or k in ("MTL_DATA_ROOT",)}
    env.update(MTL_DATA_DIR=str(tmp_path / "data"), MTL_BUILTIN_MODELS_DIR=str(builtin_dir))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    r = mtl("worker", "--queues", "gpu", env=env)
    assert r.returncode == 2 and "unknown queue" in r.stderr


def test_serve_embedded_starts_migrated_with_builtin_models(tmp_path: Path,
                                                            builtin_dir: Path) -> None:
    env = embedded_env(tmp_path, builtin_dir)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.3)
        else:
            raise AssertionError("mtl serve did not become ready")
        key = mtl("keys", "create", "--tenant", "acme", env=env).stdout.strip()
        models = httpx.get(f"{url}/v1/base-models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200
        assert "handwriting" in {m["id"] for m in models.json()}
        assert (tmp_path / "data" / "mtl.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
