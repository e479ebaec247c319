"""A classifier's holdout predictions: every held-out image with its label and the measured
model's answer, paginated, the mistakes alone on request."""

from __future__ import annotations

from typing import Any

from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.service.test_api import assert_error
from tests.utils.images import omniglot_zip
from tests.utils.training import run_job


def test_holdout_predictions_and_mistakes(client: Any, settings: Settings,
                                          user: dict[str, str]) -> None:
    ds = client.post("/v1/datasets", headers=user, data={"name": "d"},
                     files={"archive": ("d.zip", omniglot_zip([3, 50, 120, 300, 600], range(4)))})
    dataset = ds.json()
    # A zero head and no steps: every image gets the first class (all probabilities 1/5), so the
    # two held-out drawings of each other class are mistakes.
    created = client.post("/v1/classifiers", headers=user, json={
        "name": "c", "dataset_id": dataset["id"], "base_model_id": "natural",
        "params": {"steps": 0, "min_epochs": 0, "head_init": "zeros", "holdout_fraction": 0.5}}).json()
    holdout_url = f"/v1/classifiers/{created['id']}/holdout"
    assert_error(client.get(holdout_url, headers=user), 409, "come when it is ready")
    assert run_job(settings, created["job_id"]) == "succeeded"
    clf = client.get(f"/v1/classifiers/{created['id']}", headers=user).json()

    everything = client.get(holdout_url, headers=user).json()
    rows = everything["data"]
    assert everything["count"] == len(rows) == 10 and everything["next_cursor"] is None
    images = {i["id"]: i for i in client.get(f"/v1/datasets/{dataset['id']}/images?limit=100",
                                            headers=user).json()["data"]}
    for r in rows:  # each row is a real image of the dataset, with its own label
        assert (images[r["image_id"]]["filename"], images[r["image_id"]]["label"]) == (
            r["filename"], r["label"])
        assert r["correct"] == (r["label"] == r["predicted"]) and 0 < r["probability"] <= 1
    # The rows are what the metrics were computed from.
    matrix = clf["metrics"]["confusion_matrix"]
    for i, true in enumerate(clf["labels"]):
        for j, predicted in enumerate(clf["labels"]):
            assert matrix[i][j] == sum(r["label"] == true and r["predicted"] == predicted
                                       for r in rows)
    wrong = [r for r in rows if not r["correct"]]
    assert len(wrong) == 8 and {(r["predicted"], r["probability"]) for r in rows} == {
        (clf["labels"][0], 0.2)}, rows
    mistakes = client.get(holdout_url, headers=user, params={"mistakes": "true"}).json()
    assert mistakes["data"] == wrong and mistakes["count"] == len(wrong)

    # Pages of 3 add up to the whole list.
    paged, cursor = [], None
    while True:
        page = client.get(holdout_url, headers=user,
                          params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        assert page["count"] == 10
        paged += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert paged == rows
    assert_error(client.get(holdout_url, headers=user, params={"cursor": "nope"}), 422, "cursor")
    assert_error(client.get(holdout_url, headers=new_key(settings, "other")), 404, "not found")


def test_no_holdout_is_an_empty_list(client: Any, settings: Settings,
                                     user: dict[str, str]) -> None:
    ds = client.post("/v1/datasets", headers=user, data={"name": "d"},
                     files={"archive": ("d.zip", omniglot_zip([3, 50], range(3)))}).json()
    created = client.post("/v1/classifiers", headers=user, json={
        "name": "c", "dataset_id": ds["id"], "base_model_id": "handwriting",
        "params": {"steps": 2, "holdout_fraction": 0}}).json()
    assert run_job(settings, created["job_id"]) == "succeeded"
    page = client.get(f"/v1/classifiers/{created['id']}/holdout", headers=user).json()
    assert page == {"data": [], "count": 0, "next_cursor": None}


def test_the_loss_curve_is_kept_with_its_phases(client: Any, settings: Settings,
                                                user: dict[str, str]) -> None:
    ds = client.post("/v1/datasets", headers=user, data={"name": "d"},
                     files={"archive": ("d.zip", omniglot_zip([3, 50, 120], range(4)))}).json()
    created = client.post("/v1/classifiers", headers=user, json={
        "name": "c", "dataset_id": ds["id"], "base_model_id": "handwriting",
        "params": {"steps": 12, "min_epochs": 0, "holdout_fraction": 0.25}}).json()
    url = f"/v1/jobs/{created['job_id']}/curve"
    assert client.get(url, headers=user).json() == {
        "job_id": created["job_id"], "total_steps": 24, "points": []}
    assert run_job(settings, created["job_id"]) == "succeeded"
    job = client.get(f"/v1/jobs/{created['job_id']}", headers=user).json()
    curve = client.get(url, headers=user).json()
    # Both passes, every step (a short job), in order; the last point is the job's last loss.
    assert [p["step"] for p in curve["points"]] == list(range(1, 25))
    assert [p["phase"] for p in curve["points"]] == ["holdout_pass"] * 12 + ["final_pass"] * 12
    assert curve["points"][-1]["loss"] == round(job["progress"]["loss"], 5)
    assert_error(client.get(url, headers=new_key(settings, "other")), 404, "not found")
