"""Metrics and logs (issue 15): request ids from the request to the worker's log lines, one JSON
object per log line, and Prometheus metrics added up over the API and worker processes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.infra.logs import JsonFormatter
from app.infra.settings import Settings
from models.config import code_version
from tests.utils.images import omniglot_png, omniglot_zip
from tests.utils.processes import wait_for_job
from tests.utils.training import create_classifier, run_job


def _json_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    return [json.loads(JsonFormatter().format(r)) for r in records]


def test_request_id_follows_a_job_into_the_worker(client: Any, settings: Settings, user: dict,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    headers = {**user, "X-Request-ID": "req-42.abc"}
    r = client.get("/v1/base-models", headers=headers)
    assert r.headers["X-Request-ID"] == "req-42.abc"
    # A missing or unreasonable id is replaced by a new one.
    made = client.get("/healthz").headers["X-Request-ID"]
    assert len(made) == 32 and made != client.get("/healthz").headers["X-Request-ID"]
    assert client.get("/healthz", headers={"X-Request-ID": "a b\x7f" * 5}).headers[
        "X-Request-ID"] != "a b\x7f" * 5

    created = create_classifier(client, headers)
    from app.infra.db import session_scope
    from app.infra.tables import JobRecord

    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, created["job_id"])
        assert job is not None and job.request_id == "req-42.abc"
    caplog.clear()
    assert run_job(settings, created["job_id"]) == "succeeded"
    worker_lines = _json_lines([r for r in caplog.records if r.name.startswith("worker")])
    assert {line.get("event") for line in worker_lines} >= {"job.started", "job.finished"}
    for line in worker_lines:
        assert line["request_id"] == "req-42.abc" and line["job_id"] == created["job_id"]

    caplog.clear()
    client.get(f"/v1/jobs/{created['job_id']}", headers=headers)
    (access,) = _json_lines([r for r in caplog.records if r.name == "mtl.access"])
    assert access["route"] == "/v1/jobs/{job_id}" and access["status"] == 200
    assert access["method"] == "GET" and access["tenant"] == "acme"
    assert access["request_id"] == "req-42.abc" and access["duration_ms"] >= 0


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


@pytest.mark.slow  # a real `mtl serve`: the API and its worker in two processes
def test_metrics_and_json_logs_of_a_real_server(tmp_path: Path, builtin_dir: Path) -> None:
    from app.infra.db import session_scope
    from app.service.security import create_api_key
    from tests.service.test_cli import embedded_env, start_serve

    env = {**embedded_env(tmp_path, builtin_dir), "MTL_METRICS_ENABLED": "true",
           "MTL_TORCH_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = tmp_path / "serve.log"
    serve = start_serve(env, log)
    proc, url = serve.proc, serve.url
    try:
        with session_scope(f"sqlite:///{tmp_path / 'data' / 'mtl.sqlite3'}") as session:
            key, _ = create_api_key(session=session, tenant="acme", admin=False)
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, timeout=60) as http:
            ds = http.post("/v1/datasets", headers=auth, data={"name": "g"},
                           files={"archive": ("g.zip", omniglot_zip([0, 1], range(4)))}).json()
            created = http.post("/v1/classifiers", headers={**auth, "X-Request-ID": "serve-1"},
                                json={"name": "g", "dataset_id": ds["id"],
                                      "base_model_id": "handwriting",
                                      "params": {"steps": 5, "holdout_fraction": 0}}).json()
            job = wait_for_job(http, auth, created["job_id"], timeout=120, log=log)
            assert job["status"] == "succeeded", job
            predict = f"/v1/classifiers/{created['id']}/predict"
            for _ in range(2):  # the first loads the classifier, the second finds it loaded
                r = http.post(predict, headers=auth, files={"files": ("a.png", omniglot_png(0, 9))})
                assert r.status_code == 200
            samples = _samples(http.get("/metrics").text)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    route = "/v1/classifiers/{classifier_id}/predict"
    assert _value(samples, "mtl_http_request_duration_seconds_count", route=route,
                  code="200") == 2
    assert _value(samples, "mtl_build_info", version=code_version()) == 1
    assert _value(samples, "mtl_predict_cache_requests_total", result="miss") == 1
    assert _value(samples, "mtl_predict_cache_requests_total", result="hit") == 1
    assert _value(samples, "mtl_predict_batch_images_count") == 2
    # The one classifier loaded, its tensors' bytes (a Conv-4/32 and a 2-way head: tens of KiB).
    assert _value(samples, "mtl_predict_cache_classifiers") == 1
    assert 10_000 < _value(samples, "mtl_predict_cache_bytes") < 10_000_000
    assert _value(samples, "mtl_jobs_created_total", kind="training") == 1
    assert _value(samples, "mtl_jobs", kind="training", status="succeeded") == 1
    # Written by the worker process, read by the API's /metrics.
    assert _value(samples, "mtl_job_queue_wait_seconds_count", kind="training") == 1
    assert _value(samples, "mtl_job_run_seconds_count", kind="training", status="succeeded") == 1
    assert _value(samples, "mtl_jobs_finished_total", kind="training", status="succeeded") == 1

    # Every line is one JSON record: uvicorn's start-up lines, Celery's warnings and its
    # shutdown line included (they were plain text once).
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert any(x["logger"] == "uvicorn.error" and "Started server process" in x["message"] for x in lines)
    requests = [x for x in lines if x.get("event") == "request"]
    assert any(x["route"] == route and x["tenant"] == "acme" for x in requests)
    finished = [x for x in lines if x.get("event") == "job.finished"]
    assert finished and finished[0]["request_id"] == "serve-1"
    assert finished[0]["job_id"] == created["job_id"]
    # Celery's own lines about the task name the job: its task id is the job id.
    assert any(created["job_id"] in x["message"] and x["logger"].startswith("celery")
               for x in lines)
