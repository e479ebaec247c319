"""Fixtures for the service tests. Every API test runs twice: on the embedded setup (SQLite +
kombu filesystem broker) and on PostgreSQL + Redis from MTL_TEST_POSTGRES_URL / MTL_TEST_REDIS_URL.
Under CI=true a missing PostgreSQL or Redis fails the run instead of skipping."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
REPO_BUILTINS = REPO / "app" / "builtin_models"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def data_root() -> Path:
    return Path(os.environ.get("MTL_DATA_ROOT", REPO.parent / "shared" / "data"))


@dataclass
class Backend:
    name: str
    database_url: str | None
    broker_url: str | None


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: the PostgreSQL + Redis setup must be tested)")
    pytest.skip(message)


def _postgres_backend() -> Backend:
    pg = os.environ.get("MTL_TEST_POSTGRES_URL")
    redis_url = os.environ.get("MTL_TEST_REDIS_URL")
    if not pg or not redis_url:
        _unavailable("MTL_TEST_POSTGRES_URL and MTL_TEST_REDIS_URL are not set")
    assert pg and redis_url
    import redis
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(pg)
        with engine.begin() as conn:
            conn.execute(text("SELECT 1"))
            # Start from an empty database so that the migrations run from scratch.
            conn.execute(text("DROP TABLE IF EXISTS dataset_images, datasets, classifiers, jobs, "
                              "base_models, api_keys, alembic_version CASCADE"))
        engine.dispose()
        redis.Redis.from_url(redis_url).ping()
    except Exception as exc:
        _unavailable(f"PostgreSQL or Redis unreachable: {exc}")
    return Backend("postgres", pg, redis_url)


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", None, None)
    backend = _postgres_backend()
    from app.bootstrap import migrate

    migrate(Settings(data_dir=tmp_path_factory.mktemp("pg"), database_url=backend.database_url,
                     broker_url=backend.broker_url))
    return backend


@pytest.fixture(scope="session")
def builtin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed built-in base models when present, else a tiny handwriting model trained
    here in seconds on part of Omniglot background (good enough for 5-way Omniglot)."""
    if (REPO_BUILTINS / "handwriting" / "model.json").exists():
        return REPO_BUILTINS
    if os.environ.get("MTL_TEST_BUILTIN_DIR"):  # a developer's shortcut: reuse a trained folder
        return Path(os.environ["MTL_TEST_BUILTIN_DIR"])
    from models.config import PretrainConfig
    from models.data import load_omniglot_npz
    from models.training import pretrain

    root = tmp_path_factory.mktemp("builtin")
    data = load_omniglot_npz(data_root() / "omniglot" / "images_background.npz").subset(range(100))
    config = PretrainConfig(algorithm="mtl-reptile", filters=32, iterations=40, meta_batch=2)
    pretrain(config, data, device="cpu", out_dir=root / "handwriting")
    return root


def reset_postgres(backend: Backend) -> None:
    import redis
    from sqlalchemy import delete

    from app.db import session_scope
    from app.tables import ApiKey, BaseModel, Classifier, Dataset, Job

    assert backend.database_url and backend.broker_url
    with session_scope(backend.database_url) as session:
        for table in (Dataset, Classifier, Job, BaseModel, ApiKey):  # images go by cascade
            session.execute(delete(table))
    redis.Redis.from_url(backend.broker_url).flushdb()


@pytest.fixture
def make_settings(backend: Backend, builtin_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test (fresh data dir and database); keyword arguments override limits."""
    from app.bootstrap import migrate

    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        if made:
            return made[0].model_copy(update=overrides)
        if backend.name == "postgres":
            reset_postgres(backend)
        values: dict[str, Any] = dict(
            data_dir=tmp_path / "data", database_url=backend.database_url,
            broker_url=backend.broker_url, builtin_models_dir=builtin_dir, worker_device="cpu",
            max_upload_bytes=4_000_000, max_files=60, max_archive_uncompressed_bytes=3_000_000,
            max_image_pixels=4_000_000,
        )
        settings = Settings(**{**values, **overrides})
        if backend.name == "sqlite":
            migrate(settings)
        settings.ensure_dirs()
        made.append(settings)
        return settings

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def new_key(settings: Settings, tenant: str, admin: bool = False) -> dict[str, str]:
    """An Authorization header with a fresh key."""
    from app.db import session_scope
    from app.security import create_api_key

    with session_scope(settings.resolved_database_url) as session:
        key, _ = create_api_key(session=session, tenant=tenant, admin=admin)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def user(settings: Settings, client: Any) -> dict[str, str]:
    return new_key(settings, "acme")


@pytest.fixture
def admin(settings: Settings, client: Any) -> dict[str, str]:
    return new_key(settings, "ops", admin=True)


# ----------------------------------------------------------------------------- images


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def random_png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    return png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def small_zip(classes: int = 3, per_class: int = 3) -> bytes:
    return zip_bytes({f"set/class{c}/img{i}.png": random_png(c * 100 + i)
                      for c in range(classes) for i in range(per_class)})


_OMNIGLOT: dict[str, np.ndarray] = {}


def omniglot_eval() -> np.ndarray:
    """Omniglot evaluation images, bool (characters, 20, 105, 105), True = paper."""
    if "eval" not in _OMNIGLOT:
        with np.load(data_root() / "omniglot" / "images_evaluation.npz") as data:
            _OMNIGLOT["eval"] = data["images"]
    return _OMNIGLOT["eval"]


def omniglot_png(character: int, drawing: int) -> bytes:
    return png((omniglot_eval()[character, drawing] * 255).astype(np.uint8))


def omniglot_zip(characters: list[int], drawings: range) -> bytes:
    return zip_bytes({f"chars/ch{c}/{d}.png": omniglot_png(c, d)
                      for c in characters for d in drawings})


# ----------------------------------------------------------------------------- worker


class WorkerProcess:
    """`mtl worker` in a subprocess with the test's settings."""

    def __init__(self, settings: Settings, log: Path, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "MTL_DATA_DIR": str(settings.data_dir),
               "MTL_BUILTIN_MODELS_DIR": str(settings.resolved_builtin_dir),
               "MTL_WORKER_DEVICE": "cpu", "MTL_CHECKPOINT_EVERY_S": "1",
               "MTL_JOB_STALE_AFTER_S": "3", "MTL_RECOVERY_INTERVAL_S": "1",
               "OMP_NUM_THREADS": "2"}
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


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """start(settings, **env): a worker process; keyword arguments are extra MTL_* variables."""
    workers: list[WorkerProcess] = []

    def start(settings: Settings, **extra_env: str) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / "worker.log", extra_env)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


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


# ----------------------------------------------------------------------------- a private Redis


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    import shutil

    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
