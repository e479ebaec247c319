"""Versions: retraining a classifier on its dataset as it is now makes a new version; predict
answers with the newest ready version unless one is named; a version is deleted as a classifier."""

from __future__ import annotations

from typing import Any

from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.service.test_api import assert_error
from tests.utils.images import omniglot_png, omniglot_zip, zip_bytes
from tests.utils.training import run_job


def _predict(client: Any, user: dict[str, str], clf_id: str, **params: Any) -> Any:
    files = [("files", ("q.png", omniglot_png(120, 19), "image/png"))]
    return client.post(f"/v1/classifiers/{clf_id}/predict", headers=user, files=files,
                       params=params)


def test_retrain_predict_the_newest_name_one_delete_one(client: Any, settings: Settings,
                                                        user: dict[str, str]) -> None:
    ds = client.post("/v1/datasets", headers=user, data={"name": "d"},
                     files={"archive": ("d.zip", omniglot_zip([3, 50], range(3)))}).json()
    v1 = client.post("/v1/classifiers", headers=user, json={
        "name": "glyphs", "dataset_id": ds["id"], "base_model_id": "handwriting",
        "params": {"steps": 3, "holdout_fraction": 0}}).json()
    assert run_job(settings, v1["job_id"]) == "succeeded"
    first = client.get(f"/v1/classifiers/{v1['id']}", headers=user).json()
    assert (first["family_id"], first["version"]) == (v1["id"], 1)

    # The dataset gains a class; a retrain with one parameter changed.
    client.post(f"/v1/datasets/{ds['id']}/images", headers=user, files={"archive": (
        "m.zip", zip_bytes({f"m/ch120/{d}.png": omniglot_png(120, d) for d in range(3)}))})
    r = client.post(f"/v1/classifiers/{v1['id']}/versions", headers=user,
                    json={"params": {"steps": 4}})
    assert r.status_code == 202, r.text
    v2 = r.json()
    listed = client.get(f"/v1/classifiers/{v1['id']}/versions", headers=user).json()
    assert [(c["id"], c["version"], c["status"]) for c in listed] == [
        (v1["id"], 1, "ready"), (v2["id"], 2, "queued")]
    assert listed[1]["family_id"] == v1["id"] and listed[1]["name"] == "glyphs"
    assert listed[1]["params"] == {**first["params"], "steps": 4}

    # Until version 2 is ready, version 1 answers; then version 2, with the new class.
    answer = _predict(client, user, v1["id"]).json()
    assert (answer["classifier_id"], answer["version"]) == (v1["id"], 1)
    assert run_job(settings, v2["job_id"]) == "succeeded"
    for asked in (v1["id"], v2["id"]):
        answer = _predict(client, user, asked, top_k=5).json()
        assert (answer["classifier_id"], answer["version"]) == (v2["id"], 2)
        assert {p["label"] for p in answer["results"][0]["predictions"]} == {"ch3", "ch50", "ch120"}
    named = _predict(client, user, v2["id"], version=1).json()
    assert named["version"] == 1
    assert {p["label"] for p in named["results"][0]["predictions"]} == {"ch3", "ch50"}
    assert_error(_predict(client, user, v1["id"], version=3), 404,
                 "has no version 3; its versions: 1, 2")
    assert client.get(f"/v1/classifiers/{v2['id']}/versions", headers=user).json() == \
        client.get(f"/v1/classifiers/{v1['id']}/versions", headers=user).json()

    # Another tenant sees none of it.
    other = new_key(settings, "other")
    assert_error(client.post(f"/v1/classifiers/{v1['id']}/versions", headers=other, json={}),
                 404, "not found")
    assert_error(client.get(f"/v1/classifiers/{v1['id']}/versions", headers=other), 404,
                 "not found")
    assert_error(_predict(client, other, v1["id"]), 404, "not found")

    # Deleting version 2 leaves version 1 answering.
    assert client.delete(f"/v1/classifiers/{v2['id']}", headers=user).status_code == 204
    assert _predict(client, user, v1["id"]).json()["version"] == 1
    # A retrain needs the dataset.
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=user).status_code == 204
    assert_error(client.post(f"/v1/classifiers/{v1['id']}/versions", headers=user, json={}),
                 409, "was deleted")
