"""What the console stands on, through the API on both setups: live job events and the job's
phase, dataset images and thumbnails, base-model cards, the admin key list, the console's own
files, and /docs and /redoc served from local assets with a documented OpenAPI document."""

from __future__ import annotations

import io
import json
import re
import threading
from typing import Any

from PIL import Image

import app.service.schemas
from app.api.docs import EXAMPLES
from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.utils.images import small_zip


def _dataset(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    res = client.post("/v1/datasets", headers=headers, data={"name": "set"},
                      files={"archive": ("set.zip", small_zip(classes=3, per_class=3))})
    assert res.status_code == 201, res.text
    return dict(res.json())


def _events(lines: Any) -> Any:
    """The `job` events of a server-sent event stream, as parsed JSON."""
    event, data = None, []
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            if event == "job":
                yield json.loads("\n".join(data))
            event, data = None, []


def test_job_events_stream_changes_until_the_job_finishes(client: Any, user: dict[str, str]) -> None:
    ds = _dataset(client, user)
    job_id = client.post("/v1/classifiers", headers=user,
                         json={"name": "c", "dataset_id": ds["id"]}).json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=user).json()["phase"] == "queued"
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=user) as res:
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        events = _events(res.iter_lines())
        first = next(events)
        assert (first["id"], first["status"], first["phase"]) == (job_id, "queued", "queued")
        # Nothing runs the job (no worker): cancelling it is the change the stream must report,
        # and then it must end by itself.
        assert client.post(f"/v1/jobs/{job_id}/cancel", headers=user).status_code == 200
        rest = list(events)
    assert [(e["status"], e["phase"]) for e in rest] == [("cancelled", None)]


def test_job_events_need_the_key_and_the_tenant(client: Any, settings: Settings,
                                                user: dict[str, str]) -> None:
    ds = _dataset(client, user)
    job_id = client.post("/v1/classifiers", headers=user,
                         json={"name": "c", "dataset_id": ds["id"]}).json()["job_id"]
    res = client.get(f"/v1/jobs/{job_id}/events")
    assert res.status_code == 401 and res.json()["detail"].startswith("missing API key")
    bad = client.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": "Bearer mtl_x_y"})
    assert bad.status_code == 401
    other = new_key(settings, "other")
    assert client.get(f"/v1/jobs/{job_id}/events", headers=other).status_code == 404
    # A stream does not outlive its key: revoked while it is open, the stream ends (the job
    # itself, queued with no worker, would never finish).
    admin = new_key(settings, "ops", admin=True)
    prefix = user["Authorization"].split("_")[1]
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=user) as res:
        events = _events(res.iter_lines())
        assert next(events)["status"] == "queued"
        assert client.delete(f"/v1/admin/api-keys/{prefix}", headers=admin).status_code == 204
        rest: list[Any] = []
        reader = threading.Thread(target=lambda: rest.extend(events), daemon=True)
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the stream went on after its key was revoked"
    assert rest == []


def test_worker_phases_are_shown_while_running_and_cleared_when_finished(
        client: Any, settings: Settings, user: dict[str, str]) -> None:
    from worker.lifecycle import Reporter, claim_job

    ds = _dataset(client, user)
    job_id = client.post("/v1/classifiers", headers=user,
                         json={"name": "c", "dataset_id": ds["id"]}).json()["job_id"]
    claim = claim_job(settings, job_id)
    assert claim is not None
    assert client.get(f"/v1/jobs/{job_id}", headers=user).json()["phase"] == "preparing"
    reporter = Reporter(settings, claim)
    for phase in ("holdout_pass", "final_pass"):
        reporter.set_phase(phase)
        reporter.progress(3, 10, 0.5)
        job = client.get(f"/v1/jobs/{job_id}", headers=user).json()
        assert (job["status"], job["phase"]) == ("running", phase)
    assert reporter.finish("failed", error="stopped by the test")
    assert client.get(f"/v1/jobs/{job_id}", headers=user).json()["phase"] is None


def test_dataset_images_and_thumbnails(client: Any, settings: Settings,
                                       user: dict[str, str]) -> None:
    ds = _dataset(client, user)
    page = client.get(f"/v1/datasets/{ds['id']}/images", headers=user,
                      params={"label": "class1", "limit": 2}).json()
    assert page["count"] == 3 and len(page["data"]) == 2
    assert {i["label"] for i in page["data"]} == {"class1"}
    assert page["data"][0]["filename"].startswith("set/class1/")
    everything = client.get(f"/v1/datasets/{ds['id']}/images", headers=user).json()
    assert everything["count"] == 9
    image_id = page["data"][0]["id"]
    res = client.get(f"/v1/datasets/{ds['id']}/images/{image_id}/thumbnail", headers=user,
                     params={"size": 16})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(res.content)).size == (16, 16)  # 32x32 shrunk to fit 16
    big = client.get(f"/v1/datasets/{ds['id']}/images/{image_id}/thumbnail", headers=user)
    assert Image.open(io.BytesIO(big.content)).size == (32, 32)  # never enlarged
    # Another tenant's dataset, an image of another dataset, a bad size.
    other = new_key(settings, "other")
    assert client.get(f"/v1/datasets/{ds['id']}/images", headers=other).status_code == 404
    assert client.get(f"/v1/datasets/{ds['id']}/images/{image_id}/thumbnail",
                      headers=other).status_code == 404
    second = _dataset(client, user)
    assert client.get(f"/v1/datasets/{second['id']}/images/{image_id}/thumbnail",
                      headers=user).status_code == 404
    assert client.get(f"/v1/datasets/{ds['id']}/images/{image_id}/thumbnail", headers=user,
                      params={"size": 5000}).status_code == 422


def test_base_model_card_says_what_it_suits_and_how_accurate_it_is(
        client: Any, user: dict[str, str]) -> None:
    card = client.get("/v1/base-models/handwriting/card", headers=user).json()
    assert card["channels"] == 1 and card["image_size"] == 28
    assert "handwritten" in card["suits"]
    assert card["adaptation"]
    if card["pretrained_on"] and "omniglot" in card["pretrained_on"]:  # the committed model
        five_way = [a for a in card["accuracy"] if (a["ways"], a["shots"]) == (5, 1)]
        assert five_way and 0.5 < five_way[0]["accuracy"] <= 1.0
    assert client.get("/v1/base-models/nope/card", headers=user).status_code == 404


def test_admin_lists_keys_and_users_cannot(client: Any, admin: dict[str, str],
                                           user: dict[str, str]) -> None:
    keys = client.get("/v1/admin/api-keys", headers=admin).json()["data"]
    assert {(k["tenant"], k["scope"]) for k in keys} >= {("ops", "admin"), ("acme", "user")}
    assert all(set(k) == {"prefix", "tenant", "scope", "created_at"} for k in keys)
    assert client.get("/v1/admin/api-keys", headers=user).status_code == 403


def test_console_is_served_at_the_root(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(/console/[^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
    assert "/console/console.js" in page.text
    script = client.get("/console/console.js").text
    # The key is kept in session storage and sent as a header, never put in a URL.
    assert "sessionStorage" in script and "localStorage" not in script
    assert "?key=" not in script and "api_key=" not in script
    # The policy (no framing, only its own script) comes with the page wherever it is served.
    for path in ("/", "/console/index.html", "/console/console.js"):
        policy = client.get(path).headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, path


def test_docs_and_redoc_load_only_local_assets(client: Any) -> None:
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        urls = re.findall(r'(?:src|href|url:\s*)=?\s*["\']([^"\']+)["\']', html)
        assert urls, html
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))], (path, urls)
        for url in urls:
            if url.startswith("/docs-assets/"):
                assert client.get(url).status_code == 200, url
    assert "fonts.googleapis" not in client.get("/redoc").text


def test_openapi_document_has_summaries_descriptions_and_valid_examples(client: Any) -> None:
    doc = client.get("/openapi.json").json()
    operations = [(m, p, op) for p, ops in doc["paths"].items() for m, op in ops.items()]
    assert len(operations) >= 24
    missing = []
    for method, path, op in operations:
        name = f"{method.upper()} {path}"
        if not op.get("summary") or not op.get("description"):
            missing.append(f"{name}: summary or description")
        body = op.get("requestBody", {}).get("content", {})
        if "application/json" in body and "example" not in body["application/json"]:
            missing.append(f"{name}: request example")
        for status, response in op["responses"].items():
            media = response.get("content", {}).get("application/json")
            if media is not None and "example" not in media:
                missing.append(f"{name} {status}: response example")
            if status.startswith("4") and media is not None:
                assert set(media["example"]) == {"detail"}
    assert not missing, missing
    # Each example is a valid instance of its model, so the documentation cannot drift from it.
    for name, example in EXAMPLES.items():
        getattr(app.service.schemas, name).model_validate(example)
    job = doc["components"]["schemas"]["JobPublic"]
    assert "phase" in job["properties"] and "final_pass" in json.dumps(job)
