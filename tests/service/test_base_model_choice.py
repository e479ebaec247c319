"""A classifier whose request names no base model: the job scores every ready base model on the
dataset and trains from the best; a named base model is always obeyed."""

from __future__ import annotations

from typing import Any

from app.infra.settings import Settings
from app.service.base_model_choice import RULE
from tests.service.test_api import assert_error
from tests.utils.images import omniglot_zip, photo_zip
from tests.utils.training import run_job

# The built-in glyph models, in the order the candidates list them (newest registered first):
# the MTL-ProtoNet one registered beside the ProtoNet `handwriting` (issue 27).
HANDWRITING = ("handwriting-mtl", "handwriting")

def _dataset(client: Any, user: dict[str, str], archive: bytes) -> str:
    r = client.post("/v1/datasets", headers=user, data={"name": "d"},
                    files={"archive": ("d.zip", archive)})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _train(client: Any, settings: Settings, user: dict[str, str], dataset_id: str,
           **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    created = client.post("/v1/classifiers", headers=user,
                          json={"name": "c", "dataset_id": dataset_id, **body})
    assert created.status_code == 202, created.text
    assert run_job(settings, created.json()["job_id"]) == "succeeded"
    clf = client.get(f"/v1/classifiers/{created.json()['id']}", headers=user).json()
    job = client.get(f"/v1/jobs/{created.json()['job_id']}", headers=user).json()
    return clf, job


def test_glyphs_choose_handwriting_and_photos_natural(client: Any, settings: Settings,
                                                      user: dict[str, str]) -> None:
    glyphs = _dataset(client, user, omniglot_zip([3, 50, 120, 300, 600], range(5)))
    created = client.post("/v1/classifiers", headers=user,
                          json={"name": "g", "dataset_id": glyphs, "params": {"steps": 7}}).json()
    pending = client.get(f"/v1/classifiers/{created['id']}", headers=user).json()
    # Before the job runs: the candidates in tie-break order (the default first), unscored.
    assert pending["base_model_choice"] == {
        "rule": RULE, "chosen": None,
        "candidates": [{"base_model_id": m, "score": None, "margin": None, "images": 0}
                       for m in ("natural", *HANDWRITING)]}
    assert run_job(settings, created["job_id"]) == "succeeded"
    clf = client.get(f"/v1/classifiers/{created['id']}", headers=user).json()
    job = client.get(f"/v1/jobs/{created['job_id']}", headers=user).json()
    choice = clf["base_model_choice"]
    assert choice == job["base_model_choice"]
    scores = {c["base_model_id"]: (c["score"], c["margin"]) for c in choice["candidates"]}
    # Best first (by score, else by margin); a glyph model wins over the photo model.
    ranked = [c["base_model_id"] for c in choice["candidates"]]
    assert ranked[-1] == "natural" and set(ranked[:-1]) == set(HANDWRITING), ranked
    assert scores[ranked[0]] >= scores[ranked[1]] > scores["natural"], scores
    assert choice["chosen"] == clf["base_model_id"] == job["base_model_id"] == ranked[0]
    assert {c["images"] for c in choice["candidates"]} == {25}
    # The request's parameters stand; the rest come from the chosen model's card, as they would
    # had the request named it.
    named, _ = _train(client, settings, user, glyphs, base_model_id=ranked[0],
                      params={"steps": 7})
    assert clf["params"] == named["params"] and clf["params"]["steps"] == 7
    assert named["base_model_choice"] is None
    assert job["progress"]["step"] == job["progress"]["total_steps"] > 0

    photos = _dataset(client, user, photo_zip(5, 6))
    clf, job = _train(client, settings, user, photos, params={"steps": 5})
    assert clf["base_model_id"] == clf["base_model_choice"]["chosen"] == "natural", clf
    scores = {c["base_model_id"]: (c["score"], c["margin"])
              for c in clf["base_model_choice"]["candidates"]}
    assert all(scores["natural"] > scores[m] for m in HANDWRITING), scores


def test_a_named_base_model_is_obeyed(client: Any, settings: Settings,
                                      user: dict[str, str]) -> None:
    glyphs = _dataset(client, user, omniglot_zip([3, 50, 120], range(4)))
    clf, job = _train(client, settings, user, glyphs, base_model_id="natural",
                      params={"steps": 3})
    assert clf["base_model_id"] == job["base_model_id"] == "natural"
    assert clf["base_model_choice"] is None and job["base_model_choice"] is None


def test_one_image_a_class_cannot_be_scored_and_the_first_candidate_wins(
        client: Any, settings: Settings, user: dict[str, str]) -> None:
    glyphs = _dataset(client, user, omniglot_zip([3, 50, 120], range(1)))
    clf, _ = _train(client, settings, user, glyphs, params={"steps": 2})
    assert clf["base_model_choice"]["chosen"] == clf["base_model_id"] == "natural"
    assert {(c["score"], c["margin"], c["images"])
            for c in clf["base_model_choice"]["candidates"]} == {(None, None, 0)}


def test_no_base_model_can_serve_the_request(client: Any, user: dict[str, str]) -> None:
    glyphs = _dataset(client, user, omniglot_zip([3, 50, 120], range(2)))
    r = client.post("/v1/classifiers", headers=user,
                    json={"name": "c", "dataset_id": glyphs, "params": {"head_init": "meta"}})
    assert_error(r, 422, "no ready base model can serve this request")
    assert "handwriting" in r.json()["detail"] and "natural" in r.json()["detail"]
