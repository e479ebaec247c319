"""Changing a dataset after its upload: adding images (checked as an upload is), removing and
relabelling one, each recorded; a classifier trained afterwards sees the dataset as it is."""

from __future__ import annotations

from typing import Any

from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.service.test_api import assert_error
from tests.utils.images import omniglot_png, omniglot_zip, zip_bytes
from tests.utils.training import run_job


def _classes(ds: dict[str, Any]) -> dict[str, int]:
    return {c["name"]: c["count"] for c in ds["classes"]}


def test_add_relabel_remove_and_train_on_the_result(client: Any, settings: Settings,
                                                    user: dict[str, str]) -> None:
    ds = client.post("/v1/datasets", headers=user, data={"name": "d"},
                     files={"archive": ("d.zip", omniglot_zip([3, 50], range(3)))}).json()
    assert (ds["revision"], ds["edits"], _classes(ds)) == (0, [], {"ch3": 3, "ch50": 3})
    before = client.post("/v1/classifiers", headers=user, json={
        "name": "before", "dataset_id": ds["id"], "base_model_id": "handwriting",
        "params": {"steps": 2, "holdout_fraction": 0}}).json()
    assert run_job(settings, before["job_id"]) == "succeeded"

    # Add: two more of ch3, a new class, and a file that is not an image (rejected, named).
    archive = zip_bytes({"more/ch3/a.png": omniglot_png(3, 10), "more/ch3/b.png": omniglot_png(3, 11),
                         "more/ch120/a.png": omniglot_png(120, 0), "more/ch120/junk.png": b"junk"})
    r = client.post(f"/v1/datasets/{ds['id']}/images", headers=user,
                    files={"archive": ("more.zip", archive)})
    assert r.status_code == 201, r.text
    added = r.json()
    assert added["added"] == 3 and [f["file"] for f in added["rejected"]] == ["more/ch120/junk.png"]
    ds = added["dataset"]
    assert _classes(ds) == {"ch3": 5, "ch50": 3, "ch120": 1} and ds["num_images"] == 9
    assert ds["revision"] == 1 and ds["edits"][0]["change"] == "added"
    assert ds["edits"][0]["images"] == 3 and ds["edits"][0]["labels"] == ["ch120", "ch3"]
    assert_error(client.post(f"/v1/datasets/{ds['id']}/images", headers=user,
                             files={"archive": ("j.zip", zip_bytes({"x/a/j.png": b"junk"}))}),
                 422, "no image of this upload could be added")

    # Relabel one ch3 drawing as ch120; the same label again changes nothing.
    images = client.get(f"/v1/datasets/{ds['id']}/images?limit=100", headers=user).json()["data"]
    moved = next(i for i in images if i["label"] == "ch3")
    url = f"/v1/datasets/{ds['id']}/images/{moved['id']}"
    r = client.patch(url, headers=user, json={"label": "ch120"})
    assert r.status_code == 200 and r.json() == {**moved, "label": "ch120"}, r.text
    assert client.patch(url, headers=user, json={"label": "ch120"}).status_code == 200
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=user).json()
    assert _classes(ds) == {"ch3": 4, "ch50": 3, "ch120": 2} and ds["revision"] == 2
    assert {k: ds["edits"][-1][k] for k in ("change", "image_id", "label_before", "label")} == {
        "change": "relabelled", "image_id": moved["id"], "label_before": "ch3", "label": "ch120"}
    assert_error(client.patch(url, headers=user, json={"label": " "}), 422, "label")
    assert_error(client.patch(url, headers=user, json={"label": "x", "other": 1}), 422, "other")

    # Remove: counts follow; its thumbnail is gone; the last image of the last-but-one class
    # cannot go (a dataset keeps 2 classes).
    assert client.delete(url, headers=user).json()["num_images"] == 8
    assert client.get(f"{url}/thumbnail", headers=user).status_code == 404
    assert_error(client.delete(url, headers=user), 404, "not found")
    answers = [client.delete(f"/v1/datasets/{ds['id']}/images/{img['id']}", headers=user)
               for img in client.get(f"/v1/datasets/{ds['id']}/images?limit=100",
                                     headers=user).json()["data"] if img["label"] != "ch3"]
    assert [a.status_code for a in answers] == [200, 200, 200, 409]  # 3 of ch50, then ch120's
    assert_error(answers[-1], 409, "fewer than 2 classes")
    ds = client.get(f"/v1/datasets/{ds['id']}", headers=user).json()
    assert _classes(ds) == {"ch3": 4, "ch120": 1} and ds["revision"] == 6

    # Another tenant can change nothing.
    other = new_key(settings, "other")
    assert_error(client.post(f"/v1/datasets/{ds['id']}/images", headers=other,
                             files={"archive": ("more.zip", archive)}), 404, "not found")
    assert_error(client.patch(url, headers=other, json={"label": "x"}), 404, "not found")

    # A classifier trained now learns the classes as they are; the earlier one is unchanged.
    after = client.post("/v1/classifiers", headers=user, json={
        "name": "after", "dataset_id": ds["id"], "base_model_id": "handwriting",
        "params": {"steps": 2, "holdout_fraction": 0}}).json()
    assert run_job(settings, after["job_id"]) == "succeeded"
    assert client.get(f"/v1/classifiers/{after['id']}", headers=user).json()["labels"] == sorted(
        _classes(ds))
    assert client.get(f"/v1/classifiers/{before['id']}", headers=user).json()["labels"] == [
        "ch3", "ch50"]
