"""The v1 API without a worker: every route, the auth matrix, and every bad input."""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import DatasetImageRecord, DatasetRecord, JobRecord
from app.service.pagination import encode_cursor
from tests.service.conftest import new_key
from tests.utils.images import random_png, small_zip, zip_bytes


def upload_zip(client: Any, headers: dict[str, str], data: bytes, name: str = "set") -> Any:
    return client.post("/v1/datasets", headers=headers, data={"name": name},
                       files={"archive": ("set.zip", data, "application/zip")})


def stored(settings: Settings) -> tuple[int, int, int]:
    """(datasets, dataset images, image files) now stored."""
    with session_scope(settings.resolved_database_url) as session:
        datasets = session.scalar(select(func.count()).select_from(DatasetRecord))
        images = session.scalar(select(func.count()).select_from(DatasetImageRecord))
    files = sum(1 for p in settings.images_dir.rglob("*") if p.is_file())
    return int(datasets or 0), int(images or 0), files


def assert_error(response: Any, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert fragment.lower() in detail.lower(), detail


# ----------------------------------------------------------------------------- health, auth


def test_health_and_readiness(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "status": "ready", "torch_threads": client.app.state.settings.resolved_torch_threads}
    assert client.get("/openapi.json").status_code == 200


def test_auth_matrix(client: Any, settings: Settings, user: dict, admin: dict) -> None:
    assert_error(client.get("/v1/datasets"), 401, "missing API key")
    assert_error(client.get("/v1/datasets", headers={"Authorization": "Bearer mtl_x_y"}), 401,
                 "unknown")
    assert_error(client.get("/v1/datasets", headers={"Authorization": "Basic abc"}), 401, "key")
    assert_error(client.post("/v1/admin/api-keys", headers=user, json={"tenant": "x"}), 403,
                 "admin")
    assert client.get("/v1/base-models", headers=user).status_code == 200

    ds = upload_zip(client, user, small_zip()).json()
    clf = client.post("/v1/classifiers", headers=user,
                      json={"name": "c", "dataset_id": ds["id"]}).json()
    other = new_key(settings, "someone-else")
    for path in (f"/v1/datasets/{ds['id']}", f"/v1/classifiers/{clf['id']}",
                 f"/v1/jobs/{clf['job_id']}"):
        assert client.get(path, headers=user).status_code == 200
        assert_error(client.get(path, headers=other), 404, "not found")
    assert_error(client.delete(f"/v1/datasets/{ds['id']}", headers=other), 404, "not found")
    assert_error(client.post(f"/v1/jobs/{clf['job_id']}/cancel", headers=other), 404, "not found")
    assert client.get("/v1/datasets", headers=other).json()["data"] == []

    # Admin-made keys: shown once, usable, revocable.
    made = client.post("/v1/admin/api-keys", headers=admin, json={"tenant": "acme"})
    assert made.status_code == 201
    body = made.json()
    headers = {"Authorization": f"Bearer {body['key']}"}
    assert [d["id"] for d in client.get("/v1/datasets", headers=headers).json()["data"]] == [ds["id"]]
    assert client.delete(f"/v1/admin/api-keys/{body['prefix']}", headers=admin).status_code == 204
    # The key's next use says it was revoked (and what to do), not that it is unknown.
    assert_error(client.get("/v1/datasets", headers=headers), 401,
                 f"API key {body['prefix']} was revoked at ")
    assert "ask an admin for a new one" in client.get("/v1/datasets", headers=headers).text
    assert_error(client.get("/v1/datasets", headers={"Authorization": "Bearer mtl_x_y"}), 401,
                 "unknown API key")
    assert_error(client.delete(f"/v1/admin/api-keys/{body['prefix']}", headers=admin), 404,
                 "no API key in use")
    # An admin key cannot lock itself out (nor can a contract test's generated cases).
    own = admin["Authorization"].split("_")[1]
    assert_error(client.delete(f"/v1/admin/api-keys/{own}", headers=admin), 409,
                 "cannot revoke itself")
    assert client.get("/v1/datasets", headers=admin).status_code == 200
    assert_error(client.post("/v1/admin/api-keys", headers=admin, json={"tenant": "a b"}), 422,
                 "tenant")


def test_admin_key_from_settings(make_settings: Any) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(admin_key="mtl_envkey_0123456789abcdefghijklmn")
    old = {"Authorization": "Bearer mtl_envkey_0123456789abcdefghijklmn"}
    with TestClient(create_app(settings)) as client:
        made = client.post("/v1/admin/api-keys", headers=old, json={"tenant": "t"})
        assert made.status_code == 201
    # A restart with another MTL_ADMIN_KEY revokes the old one; keys it made stay.
    new = "another-admin-key-of-24-characters"
    with TestClient(create_app(make_settings(admin_key=new))) as client:
        assert_error(client.post("/v1/admin/api-keys", headers=old, json={"tenant": "t"}), 401,
                     "unknown")
        made_by_new = client.post("/v1/admin/api-keys", headers={"Authorization": f"Bearer {new}"},
                                  json={"tenant": "t"})
        assert made_by_new.status_code == 201
        assert client.get("/v1/datasets", headers={
            "Authorization": f"Bearer {made.json()['key']}"}).status_code == 200
    with TestClient(create_app(make_settings(admin_key=None))) as client:  # and none: no key
        assert_error(client.get("/v1/jobs", headers={"Authorization": f"Bearer {new}"}), 401,
                     "unknown")


# ----------------------------------------------------------------------------- datasets


def test_dataset_lifecycle(client: Any, settings: Settings, user: dict) -> None:
    members = {f"photos/cat/{i}.png": random_png(i) for i in range(3)}
    members |= {f"photos/dog/{i}.png": random_png(10 + i) for i in range(2)}
    members |= {"photos/dog/notes.txt": b"not an image", "photos/readme.md": b"x",
                "photos/.DS_Store": b"\0", "photos/cat/broken.png": random_png(99)[:60],
                "__MACOSX/photos/._cat": b"\0"}
    r = upload_zip(client, user, zip_bytes(members), name="pets")
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["name"] == "pets" and ds["num_images"] == 5
    assert ds["classes"] == [{"name": "cat", "count": 3}, {"name": "dog", "count": 2}]
    reasons = {x["file"]: x["reason"] for x in ds["rejected"]}
    assert "not a decodable image" in reasons["photos/dog/notes.txt"]
    assert "truncated" in reasons["photos/cat/broken.png"] or "corrupt" in reasons[
        "photos/cat/broken.png"]
    assert "class folder" in reasons["photos/readme.md"]
    assert {"photos/.DS_Store", "__MACOSX/photos/._cat"} <= set(reasons)

    # files + labels; the same bytes are stored once (content-addressed).
    files = [("files", (f"{i}.png", random_png(i), "image/png")) for i in range(4)]
    r = client.post("/v1/datasets", headers=user, files=files,
                    data={"name": "again", "labels": ["a", "a", "b", "b"]})
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == [{"name": "a", "count": 2}, {"name": "b", "count": 2}]
    assert stored(settings) == (2, 9, 6)

    listed = client.get("/v1/datasets", headers=user).json()["data"]
    assert [d["id"] for d in listed] == [ds["id"], r.json()["id"]]
    assert client.get(f"/v1/datasets/{ds['id']}", headers=user).json()["num_images"] == 5
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=user).status_code == 204
    assert_error(client.get(f"/v1/datasets/{ds['id']}", headers=user), 404, "not found")
    assert stored(settings) == (1, 4, 4)  # shared files stay, the dataset's own go


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring huge dimensions: a decompression bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def symlink_zip() -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for c in ("a", "b"):
            zf.writestr(f"{c}/1.png", random_png(ord(c)))
        info = zipfile.ZipInfo("a/link.png")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def bomb_zip() -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", random_png(1))
        zf.writestr("b/1.png", b"\0" * 20_000_000)  # 20 MB that compresses to ~20 KB
    return buf.getvalue()


BAD_ARCHIVES = {
    "traversal": (zip_bytes({"a/1.png": random_png(1), "../b/1.png": random_png(2)}), 422,
                  "outside the archive"),
    "absolute": (zip_bytes({"a/1.png": random_png(1), "/b/1.png": random_png(2)}), 422,
                 "absolute path"),
    "symlink": (symlink_zip(), 422, "symbolic link"),
    "zip bomb": (bomb_zip(), 413, "unpacks to"),
    "empty": (zip_bytes({}), 422, "empty"),
    "single class": (zip_bytes({"a/1.png": random_png(1), "a/2.png": random_png(2)}), 422,
                     "at least 2 classes"),
    "only bad images": (zip_bytes({"a/1.png": b"x", "b/1.png": b"y"}), 422, "at least 2 classes"),
    "not a zip": (b"PK this is not a zip", 422, "not a readable .zip"),
    "too many files": (zip_bytes({f"c{i % 2}/{i}.png": b"x" for i in range(61)}), 413,
                       "MTL_MAX_FILES"),
}


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_bad_archives_store_nothing(client: Any, settings: Settings, user: dict,
                                    case: str) -> None:
    data, status, fragment = BAD_ARCHIVES[case]
    assert_error(upload_zip(client, user, data), status, fragment)
    assert stored(settings) == (0, 0, 0)


def test_bad_images_are_listed(client: Any, settings: Settings, user: dict) -> None:
    files = [("files", ("bomb.png", huge_png(100_000, 100_000), "image/png")),
             ("files", ("big.png", huge_png(3000, 3000), "image/png")),
             ("files", ("empty.png", b"", "image/png")),
             ("files", ("ok1.png", random_png(1), "image/png")),
             ("files", ("ok2.png", random_png(2), "image/png"))]
    r = client.post("/v1/datasets", headers=user, files=files,
                    data={"name": "x", "labels": ["a", "a", "a", "a", "b"]})
    assert r.status_code == 201, r.text
    reasons = {x["file"]: x["reason"] for x in r.json()["rejected"]}
    assert set(reasons) == {"bomb.png", "big.png", "empty.png"}
    assert "too large" in reasons["bomb.png"] and "too large" in reasons["big.png"]
    assert stored(settings) == (1, 2, 2)


def test_bad_uploads(client: Any, settings: Settings, user: dict) -> None:
    two = [("files", ("1.png", random_png(1), "image/png")),
           ("files", ("2.png", random_png(2), "image/png"))]
    assert_error(client.post("/v1/datasets", headers=user, files=two,
                             data={"name": "x", "labels": ["a"]}), 422, "2 files but 1 labels")
    assert_error(client.post("/v1/datasets", headers=user, files=two,
                             data={"name": "x", "labels": ["a", " "]}), 422, "label 2")
    assert_error(client.post("/v1/datasets", headers=user, files=two, data={"labels": ["a", "b"]}),
                 422, "'name' is required")
    assert_error(client.post("/v1/datasets", headers=user, data={"name": "x"},
                             files={"other": ("a", b"b")}), 422, "send an 'archive'")
    assert_error(client.post("/v1/datasets", headers=user, json={"name": "x"}), 415, "multipart")
    big = [("files", (f"{i}.bin", b"\0" * 1_000_000, "image/png")) for i in range(5)]
    assert_error(client.post("/v1/datasets", headers=user, files=big,
                             data={"name": "x", "labels": ["a"] * 5}), 413, "MTL_MAX_UPLOAD_BYTES")
    for count in (61, 70):  # one over the limit, and far over (refused by the parser itself)
        many = [("files", (f"{i}.png", b"x", "image/png")) for i in range(count)]
        assert_error(client.post("/v1/datasets", headers=user, files=many,
                                 data={"name": "x", "labels": ["a"] * count}), 413,
                     "MTL_MAX_FILES")
    # A JSON body over the limit sent without a Content-Length (chunked) is a 413 too (it was
    # FastAPI's 400, answered as "malformed JSON").
    chunks = (b'{"name": "' if i == 0 else b"x" * 1_000_000 for i in range(6))
    assert_error(client.post("/v1/classifiers", headers={**user, "Content-Type": "application/json"},
                             content=chunks), 413, "MTL_MAX_UPLOAD_BYTES")
    broken = client.post("/v1/datasets", headers={
        **user, "Content-Type": "multipart/form-data; boundary=b"}, content=b"--b\r\n113444--b--\r\n")
    assert_error(broken, 422, "malformed multipart")
    assert stored(settings) == (0, 0, 0)


# ----------------------------------------------------------------------------- classifiers, jobs


def test_job_counts_min_epochs_steps_from_creation(client: Any, user: dict) -> None:
    """With batches smaller than the data, min_epochs adds steps, counted from the start: 3 classes
    of 3 images, 1 each held out; holdout pass 6 images x 4 epochs / batch 2 = 12 steps, final
    pass 9 x 4 / 2 = 18."""
    ds = upload_zip(client, user, small_zip()).json()
    r = client.post("/v1/classifiers", headers=user,
                    json={"name": "c", "dataset_id": ds["id"],
                          "params": {"steps": 5, "batch_size": 2, "min_epochs": 4}})
    assert r.status_code == 202, r.text
    job = client.get(f"/v1/jobs/{r.json()['job_id']}", headers=user).json()
    assert job["progress"]["total_steps"] == 12 + 18


def test_classifier_and_job_lifecycle(client: Any, settings: Settings, user: dict) -> None:
    ds = upload_zip(client, user, small_zip()).json()
    r = client.post("/v1/classifiers", headers=user, json={"name": "c", "dataset_id": ds["id"]})
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["status"] == "queued"
    clf = client.get(f"/v1/classifiers/{created['id']}", headers=user).json()
    assert clf["labels"] == ["class0", "class1", "class2"] and clf["metrics"] is None
    # Left out, the base model is the default one: the natural-image model when installed.
    has_natural = (settings.resolved_builtin_dir / "natural" / "model.json").exists()
    default = [m["id"] for m in client.get("/v1/base-models", headers=user).json()["data"]
               if m["is_default"]]
    assert clf["base_model_id"] == default[0] == ("natural" if has_natural else "handwriting")
    assert clf["params"]["steps"] > 0
    job = client.get(f"/v1/jobs/{created['job_id']}", headers=user).json()
    assert job["kind"] == "training" and job["status"] == "queued" and job["attempts"] == 0
    # A holdout pass, then the final pass on every image.
    assert job["progress"] == {"step": 0, "total_steps": 2 * clf["params"]["steps"], "fraction": 0.0,
                               "loss": None, "eta_seconds": None}
    assert [j["id"] for j in client.get("/v1/jobs", headers=user).json()["data"]] == [job["id"]]
    # The job was committed, then sent to its queue.
    with session_scope(settings.resolved_database_url) as session:
        assert session.get(JobRecord, job["id"]).enqueued_at is not None  # type: ignore[union-attr]
    assert queued_messages(settings, "training") == 1

    files = {"files": ("a.png", random_png(1), "image/png")}
    r = client.post(f"/v1/classifiers/{created['id']}/predict", headers=user, files=files)
    assert_error(r, 409, "status 'ready'")

    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=user).json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    assert client.get(f"/v1/classifiers/{created['id']}", headers=user).json()[
        "status"] == "cancelled"
    assert_error(client.post(f"/v1/jobs/{job['id']}/cancel", headers=user), 409, "already")
    assert client.delete(f"/v1/classifiers/{created['id']}", headers=user).status_code == 204
    assert_error(client.get(f"/v1/classifiers/{created['id']}", headers=user), 404, "not found")


def queued_messages(settings: Settings, queue: str) -> int:
    if settings.broker_url is None:
        return sum(1 for p in (settings.broker_folder / "queue").iterdir()
                   if p.name.endswith(f".{queue}.msg"))
    import redis

    return int(redis.Redis.from_url(settings.broker_url).llen(queue))


def test_bad_classifier_requests(client: Any, user: dict) -> None:
    ds = upload_zip(client, user, small_zip()).json()
    post = lambda body: client.post("/v1/classifiers", headers=user, json=body)  # noqa: E731
    assert_error(post({"name": "c", "dataset_id": "nope"}), 404, "dataset nope not found")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "base_model_id": "nope"}), 404,
                 "base model nope")
    assert_error(post({"dataset_id": ds["id"]}), 422, "name")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"steps": -1}}), 422,
                 "steps")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"min_epochs": -1}}), 422,
                 "min_epochs")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"learning_rate": 99}}),
                 422, "learning_rate")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"holdout_fraction": 0.9}}),
                 422, "holdout_fraction")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"head_init": "x"}}), 422,
                 "head_init")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"bogus": 1}}), 422,
                 "bogus")
    assert_error(post({"name": "c", "dataset_id": ds["id"], "params": {"head_init": "meta"}}),
                 422, "head_init 'meta' needs exactly")
    r = client.post("/v1/classifiers", headers={**user, "Content-Type": "application/json"},
                    content=b'{"name": "c", "dataset_id": ')
    assert_error(r, 422, "malformed JSON")
    for path in ("/v1/classifiers/nope", "/v1/jobs/nope", "/v1/datasets/nope"):
        assert_error(client.get(path, headers=user), 404, "not found")
    assert_error(client.post("/v1/classifiers/nope/predict", headers=user,
                             files={"files": ("a.png", b"x")}), 404, "not found")
    assert_error(client.delete("/v1/classifiers/nope", headers=user), 404, "not found")


# ----------------------------------------------------------------------------- base models, admin


def test_base_models_and_default(client: Any, user: dict, admin: dict) -> None:
    models = client.get("/v1/base-models", headers=user).json()["data"]
    assert models and sum(m["is_default"] for m in models) == 1
    names = {m["id"] for m in models}
    assert "handwriting" in names
    expected_default = "natural" if "natural" in names else models[0]["id"]
    assert next(m for m in models if m["is_default"])["id"] == expected_default
    hw = next(m for m in models if m["id"] == "handwriting")
    assert hw["channels"] == 1 and hw["image_size"] == 28 and hw["status"] == "ready"

    r = client.post("/v1/admin/base-models/handwriting/default", headers=admin)
    assert r.status_code == 200 and r.json()["is_default"]
    assert [m["id"] for m in client.get("/v1/base-models", headers=user).json()["data"]
            if m["is_default"]] == ["handwriting"]
    assert_error(client.post("/v1/admin/base-models/nope/default", headers=admin), 404,
                 "not found")
    assert_error(client.post("/v1/admin/base-models/handwriting/default", headers=user), 403,
                 "admin")


def test_the_default_base_model_is_visible_to_every_tenant(client: Any, settings: Settings,
                                                           user: dict, admin: dict) -> None:
    """An admin's pretrained base model made the default is what every tenant's classifiers start
    from: every tenant lists it, reads its card and may name it. Others of that tenant stay
    private."""
    from app.infra.tables import BaseModelRecord

    with session_scope(settings.resolved_database_url) as session:
        for name in ("published", "private"):
            session.add(BaseModelRecord(id=name, name=name, tenant="ops", algorithm="protonet",
                                        image_size=28, channels=1, status="ready",
                                        storage="builtin/handwriting"))

    def seen() -> set[str]:
        return {m["id"] for m in client.get("/v1/base-models", headers=user).json()["data"]}

    assert {"published", "private"} & seen() == set()
    assert client.post("/v1/admin/base-models/published/default", headers=admin).status_code == 200
    assert "published" in seen() and "private" not in seen()
    assert client.get("/v1/base-models/published/card", headers=user).status_code == 200
    assert_error(client.get("/v1/base-models/private/card", headers=user), 404, "not found")
    ds = upload_zip(client, user, small_zip()).json()["id"]
    for base, status in (("published", 202), (None, 202), ("private", 404)):
        body = {"name": "c", "dataset_id": ds} | ({"base_model_id": base} if base else {})
        r = client.post("/v1/classifiers", headers=user, json=body)
        assert r.status_code == status, r.text
        if status == 202:
            clf = client.get(f"/v1/classifiers/{r.json()['id']}", headers=user).json()
            assert clf["base_model_id"] == "published"


def test_pretraining_job_validation(client: Any, user: dict, admin: dict) -> None:
    ds = upload_zip(client, user, small_zip(classes=3, per_class=4)).json()
    post = lambda body: client.post("/v1/admin/pretraining-jobs", headers=admin,  # noqa: E731
                                    json={"name": "b", "dataset_id": ds["id"], **body})
    assert_error(post({"algorithm": "magic"}), 422, "unknown algorithm 'magic'")
    assert_error(post({"algorithm": "mtl-reptile", "params": {"ways": 5}}), 422,
                 "need 5 classes")
    assert_error(post({"algorithm": "mtl-reptile", "params": {"ways": 3, "shots": 3,
                                                              "queries": 3}}), 422,
                 "smallest class")
    assert_error(post({"algorithm": "mtl-reptile", "params": {"ways": 3, "beta": 2}}), 422,
                 "beta")
    assert_error(post({"algorithm": "mtl-reptile", "params": {"ways": 3, "iterations": "x"}}),
                 422, "iterations")
    assert_error(post({"algorithm": "mtl-reptile", "params": {"warp": 9}}), 422,
                 "unknown pretraining parameter")
    assert_error(client.post("/v1/admin/pretraining-jobs", headers=admin,
                             json={"name": "b", "dataset_id": "nope", "algorithm": "maml"}),
                 404, "not found")
    r = post({"algorithm": "protonet", "params": {"ways": 3, "shots": 2, "queries": 2,
                                                  "iterations": 5}})
    assert r.status_code == 202, r.text
    body = r.json()
    job = client.get(f"/v1/jobs/{body['job_id']}", headers=admin).json()
    assert job["kind"] == "pretraining" and job["status"] == "queued"
    assert job["progress"]["total_steps"] == 5
    new = next(m for m in client.get("/v1/base-models", headers=admin).json()["data"]
               if m["id"] == body["base_model_id"])
    assert new["status"] == "training" and new["algorithm"] == "protonet"
    # Other tenants do not see an admin tenant's base model.
    assert body["base_model_id"] not in {m["id"] for m in
                                         client.get("/v1/base-models", headers=user).json()["data"]}
    assert_error(client.post(f"/v1/admin/base-models/{body['base_model_id']}/default",
                             headers=admin), 409, "not ready")
    new_model = {"name": "c", "base_model_id": body["base_model_id"]}
    r = client.post("/v1/classifiers", headers=user, json={**new_model, "dataset_id": ds["id"]})
    assert_error(r, 404, "not found")  # another tenant's base model
    r = client.post("/v1/classifiers", headers=admin,
                    json={**new_model, "dataset_id": admin_dataset(client, admin)})
    assert_error(r, 409, "not ready")
    # Admin keys see every tenant's jobs; user keys only their own.
    assert body["job_id"] in {j["id"] for j in client.get("/v1/jobs", headers=admin).json()["data"]}
    assert body["job_id"] not in {j["id"] for j in client.get("/v1/jobs", headers=user).json()["data"]}


def admin_dataset(client: Any, admin: dict[str, str]) -> str:
    return str(upload_zip(client, admin, small_zip()).json()["id"])


def test_nothing_half_stored_when_the_database_write_fails(
        client: Any, settings: Settings, user: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.orm import Session

    def fail(self: Session) -> None:
        raise RuntimeError("database went away")

    from fastapi.testclient import TestClient

    monkeypatch.setattr(Session, "commit", fail)
    r = upload_zip(TestClient(client.app, raise_server_exceptions=False), user, small_zip())
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
    monkeypatch.undo()
    assert stored(settings) == (0, 0, 0)


def _labelled_copies(settings: Settings, seeds: list[int]) -> list[Any]:
    """Files as an upload has them once checked: each in the upload folder, labelled."""
    from app.service.uploads import LabelledFile

    work = settings.uploads_dir / "test-upload"
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for i, seed in enumerate(seeds):
        path = work / f"part-{i}"
        path.write_bytes(random_png(seed))
        files.append(LabelledFile(f"{seed}.png", "ab"[i % 2], path))
    return files


def _images_readable(client: Any, headers: dict[str, str], dataset_id: str) -> list[int]:
    images = client.get(f"/v1/datasets/{dataset_id}/images", headers=headers).json()["data"]
    return [client.get(f"/v1/datasets/{dataset_id}/images/{im['id']}/thumbnail",
                       headers=headers).status_code for im in images]


def test_a_dataset_deleted_while_another_stores_the_same_bytes_loses_nothing(
        client: Any, settings: Settings, user: dict) -> None:
    """Tenant B stores bytes that tenant A's dataset holds; A's dataset is deleted between B's
    files and B's commit (A's "still used?" cannot see B's rows yet). B keeps every image."""
    from app.infra.storage import ImageStore
    from app.service.datasets import store_dataset

    a = upload_zip(client, user, zip_bytes({"a/1.png": random_png(1), "b/2.png": random_png(2)}))
    assert a.status_code == 201, a.text
    other = new_key(settings, "globex")
    with session_scope(settings.resolved_database_url) as session:
        commit = session.commit

        def commit_after_a_is_deleted() -> None:
            assert client.delete(f"/v1/datasets/{a.json()['id']}", headers=user).status_code == 204
            commit()

        session.commit = commit_after_a_is_deleted  # type: ignore[method-assign]
        b = store_dataset(session=session, store=ImageStore(settings.images_dir), tenant="globex",
                          name="b", files=_labelled_copies(settings, [1, 2]), rejected=[]).id
        session.commit = commit  # type: ignore[method-assign]
    assert stored(settings) == (1, 2, 2)
    assert _images_readable(client, other, b) == [200, 200]


def test_a_failed_upload_keeps_the_files_another_upload_reused(
        client: Any, settings: Settings, user: dict) -> None:
    """Upload B creates a file; upload C reuses it and commits; B then fails. B removes only
    what no committed dataset uses."""
    from app.infra.storage import ImageStore
    from app.service.datasets import store_dataset

    c_id: list[str] = []

    def other_upload_then_fail() -> None:
        c = upload_zip(client, user, zip_bytes({"a/1.png": random_png(1), "b/2.png": random_png(2)}))
        assert c.status_code == 201, c.text
        c_id.append(c.json()["id"])
        raise RuntimeError("database went away")

    with session_scope(settings.resolved_database_url) as session:
        session.commit = other_upload_then_fail  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="went away"):
            store_dataset(session=session, store=ImageStore(settings.images_dir), tenant="acme",
                          name="b", files=_labelled_copies(settings, [1, 3]), rejected=[])
        session.rollback()
        session.commit = lambda: None  # type: ignore[method-assign]
    # B's own file (seed 3) is gone, the shared one (seed 1) stays for C.
    assert stored(settings) == (1, 2, 2)
    assert _images_readable(client, user, c_id[0]) == [200, 200]


def test_migrations_are_in_sync(settings: Settings) -> None:
    from alembic import command
    from alembic.config import Config

    from app.service.bootstrap import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", settings.resolved_database_url)
    command.check(cfg)  # raises when the tables and the migrations differ


def test_migrations_up_and_down_on_empty_sqlite(tmp_path: Path) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from app.infra.db import get_engine
    from app.service.bootstrap import alembic_config, migrate

    settings = Settings(data_dir=tmp_path)
    migrate(settings)
    engine = get_engine(settings.resolved_database_url)
    assert {"api_keys", "datasets", "dataset_images", "classifiers", "jobs", "base_models"} <= set(
        inspect(engine).get_table_names())
    command.downgrade(alembic_config(settings.resolved_database_url), "base")  # type: ignore[arg-type]
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}


def test_rows_made_before_versions_and_revocation_keep_working(tmp_path: Path) -> None:
    """Migrations 0009-0012 on rows that were there: a classifier becomes version 1 of its own
    family, a dataset has revision 0, a key is in use, a training job's parameters move to its
    classifier (taken from the job where the classifier had none) and a pretraining job keeps its."""
    from alembic import command
    from sqlalchemy import text

    from app.infra.db import get_engine
    from app.service.bootstrap import alembic_config

    settings = Settings(data_dir=tmp_path)
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    cfg = alembic_config(settings.resolved_database_url)
    command.upgrade(cfg, "0008")  # type: ignore[arg-type]
    engine = get_engine(settings.resolved_database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO classifiers (id, tenant, name, dataset_id, base_model_id, "
                          "status, labels, params, created_at) VALUES ('old', 'acme', 'c', 'd', "
                          "'handwriting', 'ready', '[]', '{}', '2026-01-01')"))
        conn.execute(text("INSERT INTO datasets (id, tenant, name, num_images, classes, rejected, "
                          "created_at) VALUES ('ds', 'acme', 'd', 0, '[]', '[]', '2026-01-01')"))
        conn.execute(text("INSERT INTO api_keys (prefix, key_hash, tenant, scope, from_env, "
                          "created_at) VALUES ('p', 'h', 'acme', 'user', false, '2026-01-01')"))
        for job, kind, clf, params in (("j1", "training", "old", '{"steps": 7}'),
                                       ("j2", "pretraining", None, '{"beta": 0.5}')):
            conn.execute(text("INSERT INTO jobs (id, tenant, kind, status, params, dataset_id, "
                              "classifier_id, step, total_steps, cancel_requested, attempts, "
                              "created_at) VALUES (:id, 'acme', :kind, 'succeeded', :params, 'ds', "
                              ":clf, 0, 0, false, 1, '2026-01-01')"),
                         {"id": job, "kind": kind, "params": params, "clf": clf})
    command.upgrade(cfg, "head")  # type: ignore[arg-type]
    with engine.begin() as conn:
        assert conn.execute(text("SELECT family_id, version FROM classifiers")).one() == ("old", 1)
        assert json.loads(conn.execute(text("SELECT params FROM classifiers")).scalar_one()) == {"steps": 7}
        assert [(i, json.loads(p)) for i, p in conn.execute(text("SELECT id, params FROM jobs ORDER BY id"))] \
            == [("j1", {}), ("j2", {"beta": 0.5})]
        assert conn.execute(text("SELECT revision, edits FROM datasets")).one() == (0, None)
        assert conn.execute(text("SELECT revoked_at FROM api_keys")).one() == (None,)


def test_predict_limits_name_their_setting(make_settings: Any) -> None:
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    from app.infra.tables import ClassifierRecord
    from app.main import create_app

    settings = make_settings(max_predict_files=3)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        ds = upload_zip(client, user, small_zip()).json()
        clf = client.post("/v1/classifiers", headers=user,
                          json={"name": "c", "dataset_id": ds["id"]}).json()
        with session_scope(settings.resolved_database_url) as session:
            session.execute(update(ClassifierRecord).where(ClassifierRecord.id == clf["id"])
                            .values(status="ready"))
        files = [("files", (f"{i}.png", b"x", "image/png")) for i in range(4)]
        r = client.post(f"/v1/classifiers/{clf['id']}/predict", headers=user, files=files)
        assert_error(r, 413, "(MTL_MAX_PREDICT_FILES)")
        images = [{"base64": "eA=="} for _ in range(4)]  # the same limit for a JSON body
        r = client.post(f"/v1/classifiers/{clf['id']}/predict", headers=user, json={"images": images})
        assert_error(r, 413, "(MTL_MAX_PREDICT_FILES)")


def test_list_routes_page_with_a_cursor(client: Any, settings: Settings, admin: dict,
                                        user: dict) -> None:
    """Every list answers {"data", "next_cursor"}; following the cursor visits each row once, in
    order; admins filter jobs by tenant and status; a cursor this API did not make is a 422."""
    for tenant in ("t1", "t2", "t3", "t4"):
        assert client.post("/v1/admin/api-keys", headers=admin, json={"tenant": tenant}).status_code == 201
    everything = client.get("/v1/admin/api-keys", headers=admin, params={"limit": 500}).json()
    assert everything["next_cursor"] is None
    seen, cursor = [], None
    while True:
        page = client.get("/v1/admin/api-keys", headers=admin,
                          params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["data"]) <= 2
        seen += [k["prefix"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [k["prefix"] for k in everything["data"]] and len(seen) >= 6

    ds = upload_zip(client, user, small_zip()).json()
    made = [client.post("/v1/classifiers", headers=user,
                        json={"name": f"c{i}", "dataset_id": ds["id"]}).json() for i in range(3)]
    first = client.get("/v1/jobs", headers=user, params={"limit": 2}).json()
    rest = client.get("/v1/jobs", headers=user, params={"cursor": first["next_cursor"]}).json()
    # Newest first, across both pages, and nothing after the last.
    assert [j["id"] for j in first["data"] + rest["data"]] == [c["job_id"] for c in made][::-1]
    assert rest["next_cursor"] is None
    clfs = client.get("/v1/classifiers", headers=user, params={"limit": 1}).json()
    assert [c["id"] for c in clfs["data"]] == [made[0]["id"]] and clfs["next_cursor"]

    client.post(f"/v1/jobs/{made[1]['job_id']}/cancel", headers=user)
    mine = client.get("/v1/jobs", headers=admin, params={"tenant": "acme"}).json()["data"]
    assert {j["id"] for j in mine} == {c["job_id"] for c in made}
    assert client.get("/v1/jobs", headers=admin, params={"tenant": "nobody"}).json()["data"] == []
    cancelled = client.get("/v1/jobs", headers=admin, params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["data"]] == [made[1]["job_id"]]
    # A user's tenant filter never widens what they see.
    assert client.get("/v1/jobs", headers=user, params={"tenant": "t1"}).json()["data"] == []
    assert_error(client.get("/v1/jobs", headers=user, params={"cursor": "not-a-cursor"}), 422,
                 "cursor")
    # Well-formed cursors with an id of the wrong type (a 500 on PostgreSQL before).
    for bad_id in (7, None, ["x"], "a\u0000b"):
        crafted = encode_cursor(["2026-01-01T00:00:00", bad_id])
        for path in ("/v1/jobs", "/v1/datasets", "/v1/classifiers", "/v1/base-models"):
            assert_error(client.get(path, headers=user, params={"cursor": crafted}), 422, "cursor")
    # Integer ids no column holds (a 500 before: OverflowError on SQLite, out of range on
    # PostgreSQL), on the lists keyed by integers.
    ds = upload_zip(client, user, small_zip()).json()["id"]
    for huge in (2**63, -(2**63) - 1, 10**30):
        crafted = encode_cursor(["2026-01-01T00:00:00", huge])
        for path, headers in ((f"/v1/datasets/{ds}/images", user), ("/v1/admin/api-keys", admin)):
            assert_error(client.get(path, headers=headers, params={"cursor": crafted}), 422,
                         "cursor")
    assert client.get("/v1/jobs", headers=user, params={"limit": 0}).status_code == 422


def test_security_headers(client: Any, settings: Settings, admin: dict, user: dict) -> None:
    """nosniff on every answer (JSON, errors, the console, the docs); no-store on the answers
    that carry a secret; the docs pages may not be framed."""
    for path, headers in (("/healthz", {}), ("/v1/datasets", user), ("/v1/nope", user),
                          ("/v1/datasets", {}), ("/", {}), ("/docs", {}), ("/openapi.json", {})):
        r = client.get(path, headers=headers)
        assert r.headers.get("x-content-type-options") == "nosniff", (path, r.status_code)
    r = client.post("/v1/admin/api-keys", headers=admin, json={"tenant": "t"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    for page in ("/docs", "/redoc"):
        assert "frame-ancestors 'none'" in client.get(page).headers["content-security-policy"]


def test_heavy_routes_are_rate_limited_per_tenant(make_settings: Any, backend: Any) -> None:
    """Uploads and training per tenant (MTL_RATE_LIMIT_*): past the limit a 429 naming the
    setting, with Retry-After; another tenant is not held back. With a Redis broker the
    counters are in Redis, so a second API process sees the same counts; embedded, each
    process counts its own."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(rate_limit_uploads="2/minute", rate_limit_training="1/minute")
    with TestClient(create_app(settings)) as client:
        user, other = new_key(settings, "acme"), new_key(settings, "globex")
        ds = [upload_zip(client, user, small_zip()).json() for _ in range(2)]
        r = upload_zip(client, user, small_zip())
        assert_error(r, 429, "MTL_RATE_LIMIT_UPLOADS=2 per 1 minute")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert upload_zip(client, other, small_zip()).status_code == 201
        body = {"name": "c", "dataset_id": ds[0]["id"], "params": {"steps": 1}}
        assert client.post("/v1/classifiers", headers=user, json=body).status_code == 202
        assert_error(client.post("/v1/classifiers", headers=user, json=body), 429,
                     "MTL_RATE_LIMIT_TRAINING")
    with TestClient(create_app(settings)) as second_process:
        shared = second_process.post("/v1/classifiers", headers=user, json=body).status_code
    assert shared == (429 if backend.name == "postgres" else 202)


def test_caps_answer_429_with_retry_after(make_settings: Any) -> None:
    """Failed authentications per address, and event streams per key, are capped: past the cap
    a 429 with Retry-After; a key verified before keeps working."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(auth_failures_per_minute=3, max_event_streams_per_key=2)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        assert client.get("/v1/datasets", headers=user).status_code == 200  # verified: cached
        for _ in range(3):
            assert client.get("/v1/datasets", headers={
                "Authorization": "Bearer mtl_00000000_wrong"}).status_code == 401
        r = client.get("/v1/datasets", headers={"Authorization": "Bearer mtl_00000000_wrong"})
        assert_error(r, 429, "too many failed authentications")
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert client.get("/v1/datasets", headers=user).status_code == 200
        # Streams: with the key's two slots taken, a third stream is refused before it opens.
        ds = upload_zip(client, user, small_zip()).json()
        created = client.post("/v1/classifiers", headers=user,
                              json={"name": "c", "dataset_id": ds["id"]}).json()
        slots = client.app.state.event_streams
        prefix = user["Authorization"].split("_")[1]
        slots.acquire(prefix)
        slots.acquire(prefix)
        r = client.get(f"/v1/jobs/{created['job_id']}/events", headers=user)
        assert_error(r, 429, "MTL_MAX_EVENT_STREAMS_PER_KEY")
        assert r.headers["retry-after"] == "5"
        slots.release(prefix)
        client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=user)
        r = client.get(f"/v1/jobs/{created['job_id']}/events", headers=user)  # ends at once
        assert r.status_code == 200 and '"status":"cancelled"' in r.text
        assert slots.open == {prefix: 1}  # the finished stream gave its slot back
