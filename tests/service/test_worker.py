"""End to end with real worker processes (`mtl worker`), on both setups."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from app.infra.settings import Settings
from models.precision import bf16_supported
from tests.service.conftest import new_key
from tests.service.test_api import assert_error
from tests.utils.images import data_root, omniglot_png, omniglot_zip
from tests.utils.processes import wait_for_job

# Real processes or long runs: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

CHARACTERS = [3, 50, 120, 300, 600]  # Omniglot evaluation characters: never seen in pretraining


def predict_accuracy(client: Any, headers: dict, classifier_id: str, drawings: range) -> float:
    files = [("files", (f"ch{c}_{d}.png", omniglot_png(c, d), "image/png"))
             for c in CHARACTERS for d in drawings]
    r = client.post(f"/v1/classifiers/{classifier_id}/predict", headers=headers, files=files,
                    data={"top_k": "3"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(files)
    correct = 0
    for result in results:
        probs = [p["probability"] for p in result["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        correct += result["predictions"][0]["label"] == "ch" + result["filename"].split("_")[0][2:]
    return correct / len(results)


def test_end_to_end_classifier(client: Any, settings: Settings, start_worker: Any) -> None:
    """5 unseen characters x 5 drawings, trained by a worker on the handwriting base model;
    predicting 10 other drawings of each is at least 80% right."""
    user = new_key(settings, "acme")
    worker = start_worker(settings)
    r = client.post("/v1/datasets", headers=user, data={"name": "glyphs"},
                    files={"archive": ("g.zip", omniglot_zip(CHARACTERS, range(5)))})
    assert r.status_code == 201, r.text
    assert r.json()["num_images"] == 25
    r = client.post("/v1/classifiers", headers=user,
                    json={"name": "glyphs", "dataset_id": r.json()["id"],
                          "base_model_id": "handwriting"})
    assert r.status_code == 202, r.text
    created = r.json()
    job = wait_for_job(client, user, created["job_id"], log=worker.log)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["progress"]["fraction"] == 1.0
    assert job["started_at"] and job["finished_at"]
    clf = client.get(f"/v1/classifiers/{created['id']}", headers=user).json()
    assert clf["status"] == "ready"
    assert clf["labels"] == sorted(f"ch{c}" for c in CHARACTERS)
    metrics = clf["metrics"]
    assert metrics is not None and len(metrics["confusion_matrix"]) == 5
    assert sum(c["support"] for c in metrics["per_class"]) == 5  # one held-out drawing a class
    accuracy = predict_accuracy(client, user, created["id"], range(10, 20))
    assert accuracy >= 0.8, accuracy
    assert client.app.state.predict_service.cached_ids() == [created["id"]]

    # A file that does not decode is answered in its place; the others still are.
    files = [("files", ("junk.png", b"junk", "image/png")),
             ("files", ("ok.png", omniglot_png(CHARACTERS[0], 19), "image/png"))]
    results = client.post(f"/v1/classifiers/{created['id']}/predict", headers=user,
                          files=files).json()["results"]
    assert results[0] == {"filename": "junk.png", "error": "not a decodable image"}
    assert len(results[1]["predictions"]) == 5

    # The same images as JSON (base64) get the same answers; bad base64 is answered in its place.
    body = {"images": [{"name": "junk.png", "base64": base64.b64encode(b"junk").decode()},
                       {"name": "ok.png",
                        "base64": base64.b64encode(omniglot_png(CHARACTERS[0], 19)).decode()},
                       {"base64": "not base64!"}]}
    as_json = client.post(f"/v1/classifiers/{created['id']}/predict", headers=user, json=body)
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["results"] == [*results, {"filename": "image3", "error": "not valid base64"}]
    top1 = client.post(f"/v1/classifiers/{created['id']}/predict", headers=user,
                       json={"images": body["images"][1:2], "top_k": 1}).json()["results"]
    assert top1[0]["predictions"] == results[1]["predictions"][:1]
    assert_error(client.post(f"/v1/classifiers/{created['id']}/predict", headers=user,
                             json={"images": []}), 422, "images")

    # Unknown: a photo is none of these characters; the drawings are. A request's threshold wins.
    photo = next((data_root() / "miniimagenet-lite" / "test").glob("*/*.jpg")).read_bytes()
    glyphs = [omniglot_png(c, 18) for c in CHARACTERS]
    files = [("files", ("photo.jpg", photo, "image/jpeg"))] + [
        ("files", (f"g{i}.png", g, "image/png")) for i, g in enumerate(glyphs)]
    answer = client.post(f"/v1/classifiers/{created['id']}/predict", headers=user, files=files).json()
    assert -1 <= answer["threshold"] <= 1
    photo_result, *glyph_results = answer["results"]
    assert photo_result["unknown"] is True and photo_result["score"] < answer["threshold"]
    assert sum(not r["unknown"] for r in glyph_results) >= 4, glyph_results
    assert min(r["score"] for r in glyph_results) > photo_result["score"]
    for threshold, unknown in (("-1", False), ("1", True)):
        got = client.post(f"/v1/classifiers/{created['id']}/predict", headers=user, files=files,
                          data={"threshold": threshold}).json()
        assert got["threshold"] == float(threshold)
        assert {r["unknown"] for r in got["results"]} == {unknown}
    assert_error(client.post(f"/v1/classifiers/{created['id']}/predict", headers=user,
                             files=files, data={"threshold": "2"}), 422, "between -1 and 1")


def test_tiny_dataset_trains_without_holdout(client: Any, settings: Settings,
                                             start_worker: Any) -> None:
    """One image a class: no holdout (metrics null), and the classifier still trains; with
    batches smaller than the data, min_epochs adds steps (3 images, batch 2, 4 epochs: 6)."""
    user = new_key(settings, "acme")
    worker = start_worker(settings)
    ds = client.post("/v1/datasets", headers=user, data={"name": "one-shot"},
                     files={"archive": ("g.zip", omniglot_zip(CHARACTERS[:3], range(1)))}).json()
    created = client.post("/v1/classifiers", headers=user,
                          json={"name": "c", "dataset_id": ds["id"],
                                "base_model_id": "handwriting",
                                "params": {"steps": 5, "batch_size": 2, "min_epochs": 4}}).json()
    # The API's count at creation is the worker's.
    assert client.get(f"/v1/jobs/{created['job_id']}", headers=user).json()["progress"]["total_steps"] == 6
    job = wait_for_job(client, user, created["job_id"], log=worker.log)
    assert job["status"] == "succeeded", job
    assert (job["progress"]["step"], job["progress"]["total_steps"]) == (6, 6), job["progress"]
    assert client.get(f"/v1/classifiers/{created['id']}", headers=user).json()["metrics"] is None


def test_pretraining_resumes_after_worker_kill(client: Any, settings: Settings,
                                                start_worker: Any) -> None:
    """Kill the worker mid-pretraining; a new worker resumes from the checkpoint and finishes.
    The new base model then trains a classifier."""
    admin = new_key(settings, "ops", admin=True)
    ds = client.post("/v1/datasets", headers=admin, data={"name": "base classes"},
                     files={"archive": ("g.zip", omniglot_zip(CHARACTERS, range(6)))}).json()
    # Long enough (several 1 s checkpoints on a quiet machine) that the kill lands mid-run: at 150
    # iterations a fast machine finished the job between two polls.
    # In bf16 (params.precision): resuming must continue it in bf16.
    params = {"filters": 16, "ways": 5, "shots": 2, "queries": 2, "meta_batch": 1,
              "inner_steps": 1, "iterations": 600, "precision": "bf16"}
    r = client.post("/v1/admin/pretraining-jobs", headers=admin,
                    json={"name": "tiny", "dataset_id": ds["id"], "algorithm": "mtl-reptile",
                          "params": params})
    assert r.status_code == 202, r.text
    job_id, base_id = r.json()["job_id"], r.json()["base_model_id"]
    # Each attempt checkpoints into its own folder; the winner's moves into place at the end.
    card = settings.base_models_dir / f".{base_id}.attempt-1" / "model.json"

    first = start_worker(settings)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if card.exists() and json.loads(card.read_text())["training"]["iteration"] > 0:
            break
        assert first.proc.poll() is None, first.log.read_text()[-3000:]
        time.sleep(0.1)
    else:
        raise AssertionError("no checkpoint was written:\n" + first.log.read_text()[-3000:])
    first.kill()
    checkpointed = json.loads(card.read_text())["training"]
    assert not checkpointed["completed"], "the job finished before the worker was killed"
    assert client.get(f"/v1/jobs/{job_id}", headers=admin).json()["status"] == "running"

    second = start_worker(settings)
    job = wait_for_job(client, admin, job_id, log=second.log)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 2
    assert job["metrics"]["resumed_from_iteration"] >= checkpointed["iteration"] > 0
    final = json.loads((settings.base_models_dir / base_id / "model.json").read_text())
    assert final["training"]["completed"] and final["training"]["iteration"] == 600
    assert final["hyperparameters"]["precision"] == "bf16"
    assert final["precision"] == ("bf16" if bf16_supported("cpu") else "fp32")
    assert [p.name for p in settings.base_models_dir.iterdir()] == [base_id]
    base = next(m for m in client.get("/v1/base-models", headers=admin).json()["data"]
                if m["id"] == base_id)
    assert base["status"] == "ready" and base["algorithm"] == "mtl-reptile"

    created = client.post("/v1/classifiers", headers=admin,
                          json={"name": "c", "dataset_id": ds["id"], "base_model_id": base_id,
                                "params": {"steps": 5}}).json()
    job = wait_for_job(client, admin, created["job_id"], log=second.log)
    assert job["status"] == "succeeded", job
    r = client.post(f"/v1/classifiers/{created['id']}/predict", headers=admin,
                    files={"files": ("x.png", omniglot_png(CHARACTERS[0], 7), "image/png")})
    assert r.status_code == 200 and len(r.json()["results"][0]["predictions"]) == 5


def test_cancel_a_running_pretraining_job(client: Any, settings: Settings,
                                          start_worker: Any) -> None:
    admin = new_key(settings, "ops", admin=True)
    ds = client.post("/v1/datasets", headers=admin, data={"name": "base classes"},
                     files={"archive": ("g.zip", omniglot_zip(CHARACTERS, range(4)))}).json()
    r = client.post("/v1/admin/pretraining-jobs", headers=admin,
                    json={"name": "long", "dataset_id": ds["id"], "algorithm": "mtl-reptile",
                          "params": {"filters": 8, "ways": 5, "shots": 2, "queries": 2,
                                     "meta_batch": 1, "inner_steps": 1, "iterations": 100000}})
    job_id, base_id = r.json()["job_id"], r.json()["base_model_id"]
    worker = start_worker(settings)
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job_id}", headers=admin).json()["progress"]["step"] < 2:
        assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
        time.sleep(0.2)
    running = client.post(f"/v1/jobs/{job_id}/cancel", headers=admin).json()
    assert running["status"] == "running"  # stops at its next step
    job = wait_for_job(client, admin, job_id, log=worker.log, timeout=60)
    assert job["status"] == "cancelled" and job["progress"]["step"] < 100000
    base = next(m for m in client.get("/v1/base-models", headers=admin).json()["data"]
                if m["id"] == base_id)
    assert base["status"] == "cancelled"
