"""Fixtures for the service tests. Every API test runs twice: on the embedded setup (SQLite +
kombu filesystem broker) and on PostgreSQL + Redis from MTL_TEST_POSTGRES_URL / MTL_TEST_REDIS_URL.
Under CI=true a missing PostgreSQL or Redis fails the run instead of skipping."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.infra.settings import Settings
from tests.utils.images import data_root
from tests.utils.processes import RedisServer, WorkerProcess

REPO = Path(__file__).resolve().parents[2]
REPO_BUILTINS = REPO / "app" / "builtin_models"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
                              "base_models, api_keys, idempotency_keys, alembic_version CASCADE"))
        engine.dispose()
        redis.Redis.from_url(redis_url).ping()
    except Exception as exc:
        _unavailable(f"PostgreSQL or Redis unreachable: {exc}")
    return Backend("postgres", pg, redis_url)


# The PostgreSQL + Redis half is outside the fast loop (`pytest -m "not slow"`): it runs the same
# tests again on the distributed setup.
@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.slow)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", None, None)
    backend = _postgres_backend()
    from app.service.bootstrap import migrate

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
    from models.loaders import load_omniglot_npz
    from models.training import pretrain

    root = tmp_path_factory.mktemp("builtin")
    data = load_omniglot_npz(data_root() / "omniglot" / "images_background.npz").subset(range(100))
    config = PretrainConfig(algorithm="mtl-reptile", filters=32, iterations=40, meta_batch=2)
    pretrain(config, data, device="cpu", out_dir=root / "handwriting")
    return root


def reset_postgres(backend: Backend) -> None:
    import redis
    from sqlalchemy import delete

    from app.infra.db import session_scope
    from app.infra.tables import (
        ApiKeyRecord,
        BaseModelRecord,
        ClassifierRecord,
        DatasetRecord,
        IdempotencyRecord,
        JobRecord,
    )

    assert backend.database_url and backend.broker_url
    with session_scope(backend.database_url) as session:
        for table in (DatasetRecord, ClassifierRecord, JobRecord, BaseModelRecord, ApiKeyRecord,
                      IdempotencyRecord):  # images go by cascade
            session.execute(delete(table))
    redis.Redis.from_url(backend.broker_url).flushdb()


@pytest.fixture
def make_settings(backend: Backend, builtin_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for one test (fresh data dir and database); keyword arguments override limits."""
    from app.service.bootstrap import migrate

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
            # Rate-limit counters of this test only: with PostgreSQL they live in the shared
            # Redis, where every test's tenant "acme" would add up otherwise. The limits are
            # far above what a test sends (tests of the limits set their own).
            rate_limit_key_prefix=f"test-{uuid.uuid4().hex}", rate_limit_uploads="10000/minute",
            rate_limit_training="10000/minute", rate_limit_exports="10000/minute",
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
    from app.infra.db import session_scope
    from app.service.security import create_api_key

    with session_scope(settings.resolved_database_url) as session:
        key, _ = create_api_key(session=session, tenant=tenant, admin=admin)
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def user(settings: Settings, client: Any) -> dict[str, str]:
    return new_key(settings, "acme")


@pytest.fixture
def admin(settings: Settings, client: Any) -> dict[str, str]:
    return new_key(settings, "ops", admin=True)


# ----------------------------------------------------------------------------- worker


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


# ----------------------------------------------------------------------------- a private Redis


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    import shutil

    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
