"""A classifier trained for real, in the test's own process: created through the API, its job
run by the worker's code (`worker.run.run_job`) without a worker process or the broker."""

from __future__ import annotations

from typing import Any

from app.infra.settings import Settings
from tests.utils.images import omniglot_zip

# Three Omniglot evaluation characters, five drawings each to train on; drawings 15-19 are left
# for the tests to predict on.
CHARACTERS = [0, 1, 2]
TRAIN_DRAWINGS = range(5)


def create_classifier(client: Any, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    """A dataset of real Omniglot drawings and a queued classifier on it (the API's answer)."""
    ds = client.post("/v1/datasets", headers=headers, data={"name": "glyphs"},
                     files={"archive": ("g.zip", omniglot_zip(CHARACTERS, TRAIN_DRAWINGS))})
    assert ds.status_code == 201, ds.text
    body = {"name": "glyphs", "dataset_id": ds.json()["id"], "base_model_id": "handwriting",
            "params": {"steps": 10, "holdout_fraction": 0.0}, **extra}
    created = client.post("/v1/classifiers", headers=headers, json=body)
    assert created.status_code == 202, created.text
    return dict(created.json())


def run_job(settings: Settings, job_id: str) -> str:
    """Run a queued job here, as a worker would."""
    from worker.run import run_job as run

    return run(settings, job_id)


def trained_classifier(client: Any, settings: Settings, headers: dict[str, str]) -> str:
    """The id of a ready classifier trained on real drawings."""
    created = create_classifier(client, headers)
    assert run_job(settings, created["job_id"]) == "succeeded"
    return str(created["id"])
