"""Idempotency-Key (issue 15): a repeat within the key's lifetime answers the first answer and
creates nothing; the same key with another body is a 409; keys are per tenant. On both setups."""

from __future__ import annotations

import uuid
from typing import Any

from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.utils.images import small_zip


def _count(client: Any, headers: dict, path: str) -> int:
    return len(client.get(path, headers=headers, params={"limit": 500}).json()["data"])


def test_repeats_create_nothing_and_other_bodies_conflict(client: Any, settings: Settings,
                                                         user: dict, admin: dict) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    archive = small_zip()
    # multipart: the client draws a new boundary each time; the repeat is still the same request
    first = client.post("/v1/datasets", headers={**user, **key}, data={"name": "s"},
                        files={"archive": ("s.zip", archive)})
    again = client.post("/v1/datasets", headers={**user, **key}, data={"name": "s"},
                        files={"archive": ("s.zip", archive)})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
    assert _count(client, user, "/v1/datasets") == 1
    other = client.post("/v1/datasets", headers={**user, **key}, data={"name": "other"},
                        files={"archive": ("s.zip", archive)})
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    assert _count(client, user, "/v1/datasets") == 1
    # Keys are per tenant: another tenant's request with the same key is its own.
    globex = new_key(settings, "globex")
    theirs = client.post("/v1/datasets", headers={**globex, **key}, data={"name": "s"},
                         files={"archive": ("s.zip", archive)})
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]

    ds = first.json()["id"]
    body = {"name": "c", "dataset_id": ds, "params": {"steps": 3}}
    ckey = {"Idempotency-Key": "clf-1"}
    made = client.post("/v1/classifiers", headers={**user, **ckey}, json=body)
    # The same JSON in another key order is the same request.
    repeat = client.post("/v1/classifiers", headers={**user, **ckey},
                         json=dict(reversed(list(body.items()))))
    assert made.status_code == repeat.status_code == 202 and repeat.json() == made.json()
    assert _count(client, user, "/v1/jobs") == 1
    # The same key on another route is another request.
    assert client.post("/v1/admin/api-keys", headers={**admin, "Idempotency-Key": "clf-1"},
                       json={"tenant": "x"}).status_code == 201
    assert client.post("/v1/classifiers", headers={**user, **ckey},
                       json={**body, "name": "d"}).status_code == 409

    # A new API key is shown once: a repeat creates no other one and answers it as null.
    kkey = {"Idempotency-Key": "key-1"}
    created = client.post("/v1/admin/api-keys", headers={**admin, **kkey}, json={"tenant": "y"})
    replay = client.post("/v1/admin/api-keys", headers={**admin, **kkey}, json={"tenant": "y"})
    assert created.json()["key"] and replay.json()["key"] is None
    assert replay.json()["prefix"] == created.json()["prefix"]
    keys = client.get("/v1/admin/api-keys", headers=admin).json()["data"]
    assert [k["tenant"] for k in keys].count("y") == 1

    # An admin's pretraining job: the repeat answers the first job and queues no other.
    before = _count(client, admin, "/v1/jobs")
    pbody = {"name": "b", "dataset_id": ds, "algorithm": "protonet",
             "params": {"ways": 3, "shots": 1, "queries": 2, "iterations": 5}}
    pkey = {"Idempotency-Key": "pre-1"}
    queued = client.post("/v1/admin/pretraining-jobs", headers={**admin, **pkey}, json=pbody)
    again = client.post("/v1/admin/pretraining-jobs", headers={**admin, **pkey}, json=pbody)
    assert queued.status_code == again.status_code == 202, queued.text
    assert again.json() == queued.json() and again.headers["Idempotent-Replayed"] == "true"
    assert _count(client, admin, "/v1/jobs") == before + 1


def test_errors_free_the_key_and_bad_keys_are_refused(client: Any, user: dict) -> None:
    key = {"Idempotency-Key": "retry-me"}
    bad = client.post("/v1/classifiers", headers={**user, **key},
                      json={"name": "c", "dataset_id": "missing"})
    assert bad.status_code == 404
    # Nothing was created, so the key is free for a corrected request.
    ds = client.post("/v1/datasets", headers=user, data={"name": "s"},
                     files={"archive": ("s.zip", small_zip())}).json()["id"]
    good = client.post("/v1/classifiers", headers={**user, **key},
                       json={"name": "c", "dataset_id": ds})
    assert good.status_code == 202
    r = client.post("/v1/classifiers", headers={**user, "Idempotency-Key": "has space"},
                    json={"name": "c", "dataset_id": ds})
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    # Without a key, or with an unknown API key, the header changes nothing.
    assert client.post("/v1/classifiers", headers={"Authorization": "Bearer nope", **key},
                       json={"name": "c", "dataset_id": ds}).status_code == 401
    assert _count(client, user, "/v1/jobs") == 1


def test_expired_keys_are_forgotten(make_settings: Any) -> None:
    from datetime import timedelta

    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from app.infra.db import session_scope
    from app.infra.tables import IdempotencyRecord, utcnow
    from app.main import create_app

    settings = make_settings()
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        key = {**user, "Idempotency-Key": "old"}
        post = {"data": {"name": "s"}, "files": {"archive": ("s.zip", small_zip())}}
        first = client.post("/v1/datasets", headers=key, **post).json()["id"]
        with session_scope(settings.resolved_database_url) as session:
            session.execute(update(IdempotencyRecord).values(
                created_at=utcnow() - timedelta(seconds=settings.idempotency_ttl_s + 1)))
        second = client.post("/v1/datasets", headers=key, **post).json()["id"]
        assert second != first


def test_a_key_whose_first_request_died_is_freed_after_the_claim_timeout(
        client: Any, settings: Settings, user: dict, monkeypatch: Any) -> None:
    """The first request's process dies before it answers (here: storing the answer fails), so
    its key stays claimed: repeats are 409 until the claim timeout, then one runs in its place."""
    from datetime import timedelta

    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from app.api import idempotency
    from app.infra.db import session_scope
    from app.infra.tables import IdempotencyRecord, utcnow

    def dies(*args: Any, **kwargs: Any) -> None:
        raise SystemError("the process died here")

    key = {**user, "Idempotency-Key": "crashed"}
    post = {"data": {"name": "s"}, "files": {"archive": ("s.zip", small_zip())}}
    monkeypatch.setattr(idempotency, "store_answer", dies)
    TestClient(client.app, raise_server_exceptions=False).post("/v1/datasets", headers=key, **post)
    monkeypatch.undo()
    r = client.post("/v1/datasets", headers=key, **post)
    assert r.status_code == 409 and "still being processed" in r.json()["detail"]
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(IdempotencyRecord).values(
            created_at=utcnow() - timedelta(seconds=settings.idempotency_claim_timeout_s + 1)))
    again = client.post("/v1/datasets", headers=key, **post)
    assert again.status_code == 201, again.text
    replay = client.post("/v1/datasets", headers=key, **post)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["id"] == again.json()["id"]


def test_the_answer_is_stored_before_it_is_sent(client: Any, user: dict, monkeypatch: Any) -> None:
    """A client that repeats a request the moment the first answer arrives must get the replay.
    CI once got "still being processed" there: the answer went out before it was stored."""
    import asyncio

    from app.api import idempotency
    events: list[str] = []
    store = idempotency.store_answer

    def recording_store(*args: Any, **kwargs: Any) -> None:
        store(*args, **kwargs)
        events.append(f"stored {kwargs['status']}")

    monkeypatch.setattr(idempotency, "store_answer", recording_store)
    ds = client.post("/v1/datasets", headers=user, data={"name": "s"},
                     files={"archive": ("s.zip", small_zip())}).json()["id"]
    body = f'{{"name": "c", "dataset_id": "{ds}", "params": {{"steps": 3}}}}'.encode()
    headers = [(k.lower().encode(), v.encode()) for k, v in user.items()]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/classifiers", "raw_path": b"/v1/classifiers",
        "query_string": b"", "root_path": "", "server": ("testserver", 80),
        "client": ("127.0.0.1", 1234),
        "headers": [*headers, (b"content-type", b"application/json"),
                    (b"idempotency-key", b"race-1"), (b"host", b"testserver")],
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            events.append(f"sent {message['status']}")

    asyncio.run(client.app(scope, receive, send))
    assert events == ["stored 202", "sent 202"]
    repeat = client.post("/v1/classifiers", content=body, headers={
        **user, "Idempotency-Key": "race-1", "Content-Type": "application/json"})
    assert repeat.status_code == 202 and repeat.headers["Idempotent-Replayed"] == "true"


def test_a_replay_needs_the_scope_the_route_needs(client: Any, settings: Settings,
                                                  admin: dict) -> None:
    """A user key of the admin's own tenant repeating the admin's key creation with the same
    Idempotency-Key gets the route's 403, not the admin's 201 replay."""
    from tests.service.conftest import new_key

    same_tenant_user = new_key(settings, "ops")  # the `admin` fixture's tenant, user scope
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.post("/v1/admin/api-keys", headers={**admin, **key}, json={"tenant": "z"})
    assert first.status_code == 201
    again = client.post("/v1/admin/api-keys", headers={**same_tenant_user, **key},
                        json={"tenant": "z"})
    assert again.status_code == 403 and "Idempotent-Replayed" not in again.headers


def _multipart(boundary: str, fields: dict[str, str], archive: bytes) -> bytes:
    """A multipart body written by hand, with the boundary given."""
    out = b""
    for name, value in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n"
                f"{value}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; "
            f"filename=\"s.zip\"\r\nContent-Type: application/zip\r\n\r\n").encode()
    return out + archive + f"\r\n--{boundary}--\r\n".encode()


def test_multipart_bodies_compare_by_their_parts(client: Any, user: dict) -> None:
    """Two uploads whose fields differ only where each spells its own boundary are different
    requests (409), and the same parts under another boundary are a repeat (replayed)."""
    key = {"Idempotency-Key": str(uuid.uuid4())}
    archive = small_zip()

    def post(boundary: str, name: str) -> Any:
        return client.post("/v1/datasets", content=_multipart(boundary, {"name": name}, archive),
                           headers={**user, **key,
                                    "Content-Type": f"multipart/form-data; boundary={boundary}"})

    first = post("aaaa1111", "set aaaa1111")
    assert first.status_code == 201, first.text
    assert first.json()["name"] == "set aaaa1111"
    other = post("bbbb2222", "set bbbb2222")
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    again = post("cccc3333", "set aaaa1111")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and _count(client, user, "/v1/datasets") == 1


def test_a_revoked_key_with_an_idempotency_key_is_told_it_was_revoked(
        client: Any, admin: dict) -> None:
    made = client.post("/v1/admin/api-keys", headers=admin, json={"tenant": "temp"}).json()
    client.delete(f"/v1/admin/api-keys/{made['prefix']}", headers=admin)
    r = client.post("/v1/datasets", headers={"Authorization": f"Bearer {made['key']}",
                                             "Idempotency-Key": "k1"},
                    data={"name": "s"}, files={"archive": ("s.zip", small_zip())})
    assert r.status_code == 401 and "was revoked" in r.json()["detail"], r.text
