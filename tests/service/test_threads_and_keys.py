"""Issue 13: every process's torch threads come from MTL_TORCH_THREADS; verified API keys are
cached for a bounded time, and revoking one still takes effect (at once through the API, within
MTL_API_KEY_CACHE_S seconds when deleted elsewhere)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sqlalchemy import delete

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import ApiKeyRecord
from app.infra.threads import available_cores, default_torch_threads, limit_threads
from app.service.security import VerifiedKey, VerifiedKeyCache, hash_key
from tests.service.conftest import new_key
from tests.utils.images import small_zip

# ----------------------------------------------------------------------------- threads


def test_default_divides_the_cores_between_the_api_and_its_worker() -> None:
    assert [default_torch_threads(c) for c in (1, 2, 3, 4, 16)] == [1, 1, 1, 2, 8]
    assert Settings(torch_threads=None).resolved_torch_threads == max(1, available_cores() // 2)
    assert Settings(torch_threads=3).resolved_torch_threads == 3
    # With several API processes, the cores are divided among them and the worker.
    assert [default_torch_threads(c, processes=4) for c in (2, 4, 16)] == [1, 1, 4]
    assert Settings(api_processes=3).resolved_torch_threads == max(1, available_cores() // 4)
    with pytest.raises(ValueError):
        Settings(torch_threads=0)


def test_limit_threads_sets_torch_and_the_environment() -> None:
    before = torch.get_num_threads(), {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        limit_threads(3)
        assert torch.get_num_threads() == 3
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "3"
    finally:
        limit_threads(before[0])
        for k, v in before[1].items():
            if v is not None:
                os.environ[k] = v


def test_the_suite_runs_with_the_configured_threads() -> None:
    # tests/conftest.py sets them for this process and every worker or server it starts.
    assert torch.get_num_threads() == int(os.environ["MTL_TORCH_THREADS"])


def test_api_applies_and_reports_its_threads(make_settings: Callable[..., Settings]) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    restore = int(os.environ["MTL_TORCH_THREADS"])
    try:
        with TestClient(create_app(make_settings(torch_threads=3))) as client:
            assert client.get("/readyz").json() == {"status": "ready", "torch_threads": 3}
            # What torch's threads in this process read when OpenMP starts (torch was imported
            # before this test, so the test's own count is checked above and restored here).
            assert os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        limit_threads(restore)


def test_training_commands_honour_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.cli.main as cli
    from app.infra.settings import get_settings

    seen: list[int] = []
    monkeypatch.setenv("MTL_TORCH_THREADS", "3")
    monkeypatch.setattr("app.infra.threads.limit_threads", seen.append)
    monkeypatch.setattr("app.cli.ml._evaluate", lambda args: 0)
    get_settings.cache_clear()
    try:
        assert cli.main(["evaluate", "--checkpoint", "x", "--dataset", "y"]) == 0
        assert seen == [3]
        assert set(cli.TRAINING_COMMANDS) == {"pretrain", "evaluate", "bench"}
    finally:
        get_settings.cache_clear()


# ----------------------------------------------------------------------------- the key cache


def test_cache_keeps_found_keys_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("app.service.security.time.monotonic", lambda: now[0])
    cache = VerifiedKeyCache(ttl_s=5.0, max_entries=2)
    a, b, c = (VerifiedKey(p, "t", "user") for p in "abc")
    cache.put("da", a)
    assert cache.get("da") == a
    now[0] += 4.9
    assert cache.get("da") == a
    now[0] += 0.2
    assert cache.get("da") is None and len(cache) == 0  # expired: asked again
    for digest, key in (("da", a), ("db", b), ("dc", c)):
        cache.put(digest, key)
    assert cache.get("da") is None and cache.get("dc") == c  # bounded: the oldest went
    cache.forget("c")
    assert cache.get("dc") is None and cache.get("db") == b
    # A request that read the key just before its revocation committed cannot put it back.
    cache.put("dc", c)
    assert cache.get("dc") is None
    now[0] += 5.1  # (a key is never un-revoked; its prefix is only remembered for the TTL)
    cache.put("dc", c)
    assert cache.get("dc") == c
    off = VerifiedKeyCache(ttl_s=0)
    off.put("da", a)
    assert off.get("da") is None


def test_revocation_through_the_api_is_immediate(client: Any, admin: dict[str, str]) -> None:
    made = client.post("/v1/admin/api-keys", headers=admin, json={"tenant": "acme"}).json()
    headers = {"Authorization": f"Bearer {made['key']}"}
    for _ in range(2):  # the second answer comes from the cache
        assert client.get("/v1/datasets", headers=headers).status_code == 200
    assert len(client.app.state.verified_keys) >= 1
    assert client.delete(f"/v1/admin/api-keys/{made['prefix']}", headers=admin).status_code == 204
    assert client.get("/v1/datasets", headers=headers).status_code == 401


def test_a_key_deleted_elsewhere_stops_within_the_cache_time(
    client: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr("app.service.security.time.monotonic", lambda: now[0])
    headers = new_key(settings, "acme")
    assert client.get("/v1/datasets", headers=headers).status_code == 200
    # Deleted in the database by another process (another API replica, an operator).
    digest = hash_key(headers["Authorization"].removeprefix("Bearer "))
    with session_scope(settings.resolved_database_url) as session:
        session.execute(delete(ApiKeyRecord).where(ApiKeyRecord.key_hash == digest))
    ttl = settings.api_key_cache_s
    assert ttl == 5.0  # the documented default
    now[0] += ttl - 0.5
    assert client.get("/v1/datasets", headers=headers).status_code == 200  # still cached
    now[0] += 1.0
    assert client.get("/v1/datasets", headers=headers).status_code == 401  # asked again: gone


def test_unknown_keys_are_not_cached_and_tenants_stay_apart(
    client: Any, settings: Settings
) -> None:
    bogus = {"Authorization": "Bearer mtl_0000_nope"}
    for _ in range(3):
        assert client.get("/v1/datasets", headers=bogus).status_code == 401
    assert len(client.app.state.verified_keys) == 0
    acme, other = new_key(settings, "acme"), new_key(settings, "other")
    made = client.post("/v1/datasets", headers=acme, data={"name": "d"},
                       files={"archive": ("d.zip", small_zip(), "application/zip")})
    assert made.status_code == 201, made.text
    for _ in range(2):  # cached keys keep their own tenant
        assert client.get(f"/v1/datasets/{made.json()['id']}", headers=acme).status_code == 200
        assert client.get(f"/v1/datasets/{made.json()['id']}", headers=other).status_code == 404
    user = new_key(settings, "acme")
    for _ in range(2):  # and their own scope
        assert client.get("/v1/admin/api-keys", headers=user).status_code == 403
