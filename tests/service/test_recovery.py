"""Failure modes of the job pipeline: a broker that loses its queue, a broker down while recovery
sends, a cancelled job whose worker dies, a job over its time limit, two attempts racing to
save one classifier, and a classifier deleted or cancelled while its job saves."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord, ClassifierRecord, JobRecord, utcnow
from app.main import create_app
from tests.service.conftest import Backend, new_key
from tests.utils.images import small_zip
from tests.utils.processes import RedisServer, wait_for_job

# Real processes or long runs: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow


def upload(client: Any, headers: dict[str, str]) -> str:
    r = client.post("/v1/datasets", headers=headers, data={"name": "set"},
                    files={"archive": ("set.zip", small_zip(), "application/zip")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def new_classifier(client: Any, headers: dict[str, str], dataset_id: str,
                   steps: int = 1) -> dict[str, Any]:
    r = client.post("/v1/classifiers", headers=headers,
                    json={"name": "c", "dataset_id": dataset_id, "base_model_id": "handwriting",
                          "params": {"steps": steps}})
    assert r.status_code == 202, r.text
    return dict(r.json())


def tiny_pretraining(client: Any, admin: dict[str, str], iterations: int) -> dict[str, Any]:
    """A queued MTL-Reptile pretraining job on a small dataset (the API's answer)."""
    r = client.post("/v1/admin/pretraining-jobs", headers=admin,
                    json={"name": "tiny", "dataset_id": upload(client, admin),
                          "algorithm": "mtl-reptile",
                          "params": {"filters": 8, "ways": 3, "shots": 1, "queries": 1,
                                     "inner_steps": 1, "iterations": iterations}})
    assert r.status_code == 202, r.text
    return dict(r.json())


def as_lost_worker(settings: Settings, job_id: str, **values: Any) -> None:
    """Make a job look as if its worker died while running it (no heartbeat for an hour)."""
    long_ago = utcnow() - timedelta(hours=1)
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(JobRecord).where(JobRecord.id == job_id).values(
            status="running", attempts=1, heartbeat_at=long_ago, started_at=long_ago, **values))


def job_row(settings: Settings, job_id: str) -> JobRecord:
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, job_id)
        assert job is not None
        return job


def test_queued_jobs_survive_a_broker_restart_without_persistence(
        backend: Backend, make_settings: Any, private_redis: RedisServer,
        start_worker: Any) -> None:
    """Jobs queued while no worker runs; Redis restarts and loses its queue; a worker started
    afterwards runs every job, once, at once (not after MTL_QUEUED_RESEND_AFTER_S, 600 s)."""
    if backend.name != "postgres":
        pytest.skip("the Redis broker is tested in the distributed setup (PostgreSQL)")
    settings = make_settings(broker_url=private_redis.url)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        dataset_id = upload(client, user)
        jobs = [new_classifier(client, user, dataset_id)["job_id"] for _ in range(3)]
        assert private_redis.llen("training") == 3
        private_redis.restart()
        assert private_redis.llen("training") == 0  # the messages are gone; the rows say queued
        worker = start_worker(settings, MTL_RECOVERY_INTERVAL_S="600")
        for job_id in jobs:
            job = wait_for_job(client, user, job_id, timeout=60, log=worker.log)
            assert job["status"] == "succeeded" and job["attempts"] == 1, job


def test_a_worker_that_regains_its_broker_sends_the_queued_jobs_again(
        backend: Backend, make_settings: Any, private_redis: RedisServer,
        start_worker: Any) -> None:
    """The broker goes away under a running worker; jobs created meanwhile could not be sent;
    once the broker is back, the worker's reconnection sends them (not the periodic recovery,
    set here to every 10 minutes) and they run."""
    if backend.name != "postgres":
        pytest.skip("the Redis broker is tested in the distributed setup (PostgreSQL)")
    settings = make_settings(broker_url=private_redis.url)
    worker = start_worker(settings, MTL_RECOVERY_INTERVAL_S="600")
    deadline = time.monotonic() + 60
    while "ready." not in (worker.log.read_text() if worker.log.exists() else ""):
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.2)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        dataset_id = upload(client, user)
        private_redis.stop()
        jobs = [new_classifier(client, user, dataset_id)["job_id"] for _ in range(2)]
        assert {job_row(settings, j).enqueued_at for j in jobs} == {None}  # never sent
        private_redis.start()
        for job_id in jobs:
            job = wait_for_job(client, user, job_id, timeout=60, log=worker.log)
            assert job["status"] == "succeeded" and job["attempts"] == 1, job


def test_recovery_survives_a_broker_outage(make_settings: Any,
                                           private_redis: RedisServer) -> None:
    """A lost worker's job is re-queued while the broker is down: recovery does not stop, the
    job is not marked sent, and the next pass sends it once the broker is back."""
    from worker.recovery import recover_orphans

    settings = make_settings(broker_url=private_redis.url)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        job_id = new_classifier(client, user, upload(client, user))["job_id"]
    private_redis.restart()  # the first message is gone
    as_lost_worker(settings, job_id)
    private_redis.stop()
    assert recover_orphans(settings) == []
    job = job_row(settings, job_id)
    assert (job.status, job.enqueued_at) == ("queued", None)
    with session_scope(settings.resolved_database_url) as session:  # as if 30 s had passed
        session.execute(update(JobRecord).where(JobRecord.id == job_id)
                        .values(created_at=utcnow() - timedelta(minutes=5)))
    private_redis.start()
    assert recover_orphans(settings) == [job_id]
    assert job_row(settings, job_id).enqueued_at is not None
    assert private_redis.llen("training") == 1


def test_a_queued_message_not_taken_in_time_is_sent_again(client: Any,
                                                          make_settings: Any) -> None:
    from worker.recovery import recover_orphans

    settings = make_settings()
    user = new_key(settings, "acme")
    job_id = new_classifier(client, user, upload(client, user))["job_id"]
    assert recover_orphans(settings) == []  # sent just now: nothing to do
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(JobRecord).where(JobRecord.id == job_id)
                        .values(enqueued_at=utcnow() - timedelta(seconds=601)))
    assert recover_orphans(settings) == [job_id]
    assert recover_orphans(settings) == []  # and not again until the bound has passed anew


def test_a_cancelled_job_whose_worker_died_ends_cancelled(client: Any, settings: Settings,
                                                          admin: dict) -> None:
    """Cancel asked while running, then the worker died: the job and its base model end
    cancelled instead of being re-queued (and skipped) forever."""
    from worker.recovery import recover_orphans

    dataset_id = upload(client, admin)
    r = client.post("/v1/admin/pretraining-jobs", headers=admin,
                    json={"name": "b", "dataset_id": dataset_id, "algorithm": "protonet",
                          "params": {"ways": 3, "shots": 1, "queries": 1, "iterations": 5}})
    assert r.status_code == 202, r.text
    job_id, base_id = r.json()["job_id"], r.json()["base_model_id"]
    as_lost_worker(settings, job_id)
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=admin).json()["status"] == "running"
    recover_orphans(settings)
    job = client.get(f"/v1/jobs/{job_id}", headers=admin).json()
    assert job["status"] == "cancelled", job
    with session_scope(settings.resolved_database_url) as session:
        base = session.get(BaseModelRecord, base_id)
        assert base is not None and base.status == "cancelled"

    # A job an older version left queued with a cancel request is finished too.
    clf = new_classifier(client, admin, dataset_id)
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(JobRecord).where(JobRecord.id == clf["job_id"]).values(cancel_requested=True))
    recover_orphans(settings)
    assert client.get(f"/v1/jobs/{clf['job_id']}", headers=admin).json()["status"] == "cancelled"
    assert client.get(f"/v1/classifiers/{clf['id']}", headers=admin).json()["status"] == "cancelled"


def test_a_job_over_its_time_limit_fails(client: Any, settings: Settings, admin: dict) -> None:
    """The worker stops a pretraining attempt at its time limit (checkpointing first) and fails
    the job with a message that names the limit."""
    from worker.run import run_job

    job_id = tiny_pretraining(client, admin, 5000)["job_id"]
    # 5,000 iterations take 20-60 s here; 3 s leave time for some even on a loaded machine.
    limited = settings.model_copy(update={"pretraining_time_limit_s": 3.0})
    assert run_job(limited, job_id) == "failed"
    job = client.get(f"/v1/jobs/{job_id}", headers=admin).json()
    assert job["status"] == "failed" and "MTL_PRETRAINING_TIME_LIMIT_S" in job["error"], job
    assert 0 < job["progress"]["step"] < 5000


def race_two_attempts(settings: Settings, job_id: str, run: Any, written: Any) -> None:
    """Attempt 1 claims the job and goes silent; recovery re-queues it; attempt 2 claims and
    finishes it (`run(settings, job_id, reporter)`); then attempt 1, whose last ownership check
    passed just before it lost the job, runs to its end: it must lose and leave the file
    `written()` names as attempt 2 wrote it."""
    from worker.lifecycle import Reporter, claim_job

    first = claim_job(settings, job_id)
    assert first is not None
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(JobRecord).where(JobRecord.id == job_id).values(status="queued"))
    second = claim_job(settings, job_id)
    assert second is not None and second.attempt == 2
    assert run(settings, job_id, Reporter(settings, second)) == "succeeded"
    before = written().stat()

    class LateReporter(Reporter):
        def should_stop(self) -> bool:
            return False

    assert run(settings, job_id, LateReporter(settings, first)) == "lost"
    after = written().stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_losing_attempt_never_overwrites_the_winners_classifier(
        client: Any, settings: Settings, user: dict) -> None:
    """Attempt 1 went silent and was re-queued; attempt 2 finished. When attempt 1 then reaches
    its end, it writes nothing."""
    from worker.train_classifier import train_classifier

    created = new_classifier(client, user, upload(client, user), steps=2)
    race_two_attempts(settings, created["job_id"], train_classifier,
                      lambda: settings.classifiers_dir / created["id"] / "model.safetensors")
    assert sorted(p.name for p in settings.classifiers_dir.iterdir()) == [created["id"]]
    with session_scope(settings.resolved_database_url) as session:
        clf = session.get(ClassifierRecord, created["id"])
        assert clf is not None and clf.status == "ready"


def test_a_losing_pretraining_attempt_never_overwrites_the_finished_base_model(
        client: Any, settings: Settings, admin: dict) -> None:
    """As above for a base model: attempt 1, running on, checkpoints only into its own folder
    and installs nothing."""
    from worker.pretrain_base_model import pretrain_base_model

    created = tiny_pretraining(client, admin, 20)
    base_id = created["base_model_id"]
    race_two_attempts(settings, created["job_id"], pretrain_base_model,
                      lambda: settings.base_models_dir / base_id / "model.safetensors")
    with session_scope(settings.resolved_database_url) as session:
        base = session.get(BaseModelRecord, base_id)
        assert base is not None and base.status == "ready"


@pytest.mark.parametrize("how", ["delete", "cancel"])
def test_a_classifier_deleted_or_cancelled_as_its_job_saves_is_not_revived(
        client: Any, settings: Settings, user: dict, monkeypatch: pytest.MonkeyPatch,
        how: str) -> None:
    """The user deletes the classifier (or cancels its job) after the job's last cancel check,
    while it saves: the job ends cancelled and installs nothing."""
    from app.service.jobs import JobPhase
    from worker.lifecycle import Reporter
    from worker.run import run_job

    created = new_classifier(client, user, upload(client, user), steps=2)
    set_phase = Reporter.set_phase

    def user_acts_while_saving(self: Reporter, phase: JobPhase) -> None:
        set_phase(self, phase)
        if phase == JobPhase.SAVING:
            r = (client.delete(f"/v1/classifiers/{created['id']}", headers=user) if how == "delete"
                 else client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=user))
            assert r.status_code in (200, 204), r.text

    monkeypatch.setattr(Reporter, "set_phase", user_acts_while_saving)
    assert run_job(settings, created["job_id"]) == "cancelled"
    assert client.get(f"/v1/jobs/{created['job_id']}", headers=user).json()["status"] == "cancelled"
    clf = client.get(f"/v1/classifiers/{created['id']}", headers=user)
    assert (clf.status_code, clf.json().get("status")) == ((404, None) if how == "delete"
                                                           else (200, "cancelled"))
    assert list(settings.classifiers_dir.iterdir()) == []


def test_embedded_broker_keeps_to_the_data_dir(tmp_path: Path, monkeypatch: Any) -> None:
    """Sending through the filesystem broker creates nothing in the current directory."""
    from app.infra.broker import TRAIN_CLASSIFIER, enqueue

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    settings = Settings(data_dir=tmp_path / "data")
    settings.ensure_dirs()
    enqueue(settings, TRAIN_CLASSIFIER, "some-job")
    assert list(cwd.iterdir()) == []
    assert (settings.broker_folder / "control").is_dir()
