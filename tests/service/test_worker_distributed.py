"""A pretraining job asking for two processes runs on a real worker (CPU: gloo, the worker's
threads divided) and records them in its base model's card."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.infra.settings import Settings
from tests.service.conftest import new_key
from tests.utils.images import omniglot_zip
from tests.utils.processes import wait_for_job

pytestmark = pytest.mark.slow  # a real worker process, which spawns another


def test_pretraining_job_on_two_processes(client: Any, settings: Settings, start_worker: Any) -> None:
    admin = new_key(settings, "ops", admin=True)
    ds = client.post("/v1/datasets", headers=admin, data={"name": "base classes"},
                     files={"archive": ("g.zip", omniglot_zip([3, 50, 120, 300, 600], range(6)))}).json()
    params = {"filters": 8, "ways": 5, "shots": 2, "queries": 2, "meta_batch": 2, "inner_steps": 1,
              "iterations": 10, "processes": 2}
    r = client.post("/v1/admin/pretraining-jobs", headers=admin,
                    json={"name": "spread", "dataset_id": ds["id"], "algorithm": "mtl-reptile",
                          "params": params})
    assert r.status_code == 202, r.text
    worker = start_worker(settings)
    job = wait_for_job(client, admin, r.json()["job_id"], log=worker.log)
    assert job["status"] == "succeeded", job
    card = json.loads((settings.base_models_dir / r.json()["base_model_id"] / "model.json").read_text())
    assert card["hyperparameters"]["processes"] == 2 and card["training"]["completed"]
    assert card["training"]["iteration"] == 10
