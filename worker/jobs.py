"""What a job does, apart from Celery: claim the row, run a pure training function from `models/`
with a progress callback, and record the outcome. The row is the source of truth.

Ownership: claiming a queued job increments `attempts`, and every later write is conditional on
that attempt still owning a running job. A worker that lost its job (re-queued after it went
silent) therefore stops at its next step and can never complete it a second time.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update

from app.base_models import base_model_dir, read_card
from app.db import session_scope
from app.schemas import adapt_config
from app.settings import Settings
from app.storage import ImageStore
from app.tables import BaseModel, Classifier, Dataset, DatasetImage, Job, utcnow
from worker.celery_app import PRETRAIN_BASE_MODEL, TRAIN_CLASSIFIER, enqueue

log = logging.getLogger(__name__)

TASK_OF_KIND = {"training": TRAIN_CLASSIFIER, "pretraining": PRETRAIN_BASE_MODEL}
MAX_ATTEMPTS = 3
# What a running job is doing, in order (`Job.phase`). A classifier's job trains twice: first on
# its training split to measure holdout accuracy, then from the base model again on every image,
# so its loss starts high a second time; the phase says why.
PHASES = ("preparing", "holdout_pass", "final_pass", "pretraining", "saving")


class JobFailed(Exception):
    """The job cannot run as asked; the message is shown to the user."""


@dataclass
class Claim:
    job_id: str
    attempt: int
    kind: str


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_job(settings: Settings, job_id: str) -> Claim | None:
    """Mark a queued job running for this worker; None when it is not ours to run."""
    url = settings.resolved_database_url
    now = utcnow()
    with session_scope(url) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
            .values(
                status="running",
                attempts=Job.attempts + 1,
                worker=worker_name(),
                heartbeat_at=now,
                started_at=now,
                finished_at=None,
                error=None,
                phase="preparing",
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get(Job, job_id)
        assert job is not None
        if job.kind == "training" and job.classifier_id:
            session.execute(
                update(Classifier)
                .where(Classifier.id == job.classifier_id)
                .values(status="training")
            )
        return Claim(job_id, job.attempts, job.kind)


class Reporter:
    """Progress and cancellation for one claimed job, written at most every `interval` seconds."""

    def __init__(self, settings: Settings, claim: Claim, interval: float = 0.5) -> None:
        self.url = settings.resolved_database_url
        self.claim = claim
        self.interval = interval
        self._last_write = 0.0
        self._last_check = 0.0
        self._stop = False
        self._start = time.monotonic()
        self._first_step: int | None = None
        # A solo-pool worker cannot enforce Celery's time limits, so the limit is checked
        # between steps like a cancel; a pretraining run then checkpoints before it stops.
        self.time_limit_s, self.limit_setting = (
            (settings.pretraining_time_limit_s, "MTL_PRETRAINING_TIME_LIMIT_S")
            if claim.kind == "pretraining"
            else (settings.training_time_limit_s, "MTL_TRAINING_TIME_LIMIT_S")
        )
        self._deadline = self._start + self.time_limit_s
        self.timed_out = False

    def _owned(self) -> Any:
        return and_(
            Job.id == self.claim.job_id, Job.attempts == self.claim.attempt, Job.status == "running"
        )

    def progress(self, step: int, total: int, loss: float | None) -> None:
        now = time.monotonic()
        if self._first_step is None:
            self._first_step, self._start = step - 1, now
        if now - self._last_write < self.interval and step < total:
            return
        self._last_write = now
        done = step - (self._first_step or 0)
        eta = (now - self._start) / done * (total - step) if done > 0 else None
        clean_loss = loss if loss is not None and loss == loss else None  # NaN is not JSON
        with session_scope(self.url) as session:
            result = session.execute(
                update(Job)
                .where(self._owned())
                .values(
                    step=step,
                    total_steps=total,
                    loss=clean_loss,
                    eta_seconds=None if eta is None else round(eta, 1),
                    heartbeat_at=utcnow(),
                )
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                self._stop = True

    def set_phase(self, phase: str) -> None:
        """Record what the job does next (one of PHASES); written at once, as phases are few."""
        assert phase in PHASES, phase
        with session_scope(self.url) as session:
            session.execute(update(Job).where(self._owned()).values(phase=phase))

    def should_stop(self) -> bool:
        """True once the job was cancelled, this attempt no longer owns it, or its time is up."""
        now = time.monotonic()
        if now > self._deadline:
            self.timed_out = True
            return True
        if not self._stop and now - self._last_check >= self.interval:
            self._last_check = now
            with session_scope(self.url) as session:
                row = session.execute(select(Job.cancel_requested).where(self._owned())).first()
            self._stop = row is None or bool(row[0])
        return self._stop

    def finish(
        self,
        status: str,
        *,
        metrics: dict[str, Any] | None = None,
        error: str | None = None,
        on_owned: Callable[[Any], None] | None = None,
    ) -> bool:
        """Record the outcome, with `on_owned(session)` in the same transaction; False when this
        attempt no longer owns the job (nothing is written then)."""
        with session_scope(self.url) as session:
            values: dict[str, Any] = {
                "status": status,
                "finished_at": utcnow(),
                "error": error,
                "eta_seconds": None,
                "heartbeat_at": utcnow(),
                "phase": None,
            }
            if metrics is not None:
                values["metrics"] = metrics
            if status == "succeeded":
                values["step"] = Job.total_steps
            result = session.execute(update(Job).where(self._owned()).values(**values))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return False
            if on_owned is not None:
                on_owned(session)
            return True


def run_job(settings: Settings, job_id: str) -> str:
    """Claim and run one job; returns what happened (for logs and tests)."""
    from models.errors import MTLError, TrainingCancelled

    claim = claim_job(settings, job_id)
    if claim is None:
        log.info("job %s is not queued (finished, cancelled or taken); skipping", job_id)
        return "skipped"
    reporter = Reporter(settings, claim)
    runner = train_classifier if claim.kind == "training" else pretrain_base_model
    heartbeat = Heartbeat(settings, claim)
    heartbeat.start()
    try:
        outcome = runner(settings, job_id, reporter)
    except TrainingCancelled:
        if reporter.timed_out:
            error = (
                f"the job ran longer than its time limit of {reporter.time_limit_s:g} s "
                f"({reporter.limit_setting})"
            )
            finished = reporter.finish(
                "failed", error=error, on_owned=lambda s: _mark_product(s, job_id, "failed")
            )
            return "failed" if finished else "lost"
        if reporter.finish("cancelled", on_owned=lambda s: _mark_product(s, job_id, "cancelled")):
            return "cancelled"
        return "lost"
    except (JobFailed, MTLError) as exc:
        reporter.finish(
            "failed", error=str(exc), on_owned=lambda s: _mark_product(s, job_id, "failed")
        )
        return "failed"
    except Exception as exc:
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        reporter.finish(
            "failed",
            error=f"internal error: {type(exc).__name__}: {exc}",
            on_owned=lambda s: _mark_product(s, job_id, "failed"),
        )
        return "failed"
    finally:
        heartbeat.stop()
    return outcome


class Heartbeat(threading.Thread):
    """Marks the claimed job alive every `job_stale_after_s / 6` seconds while it runs, however
    long a step (loading data, one big iteration) takes. Stops when this attempt loses the job."""

    def __init__(self, settings: Settings, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.job_id}")
        self.url = settings.resolved_database_url
        self.claim = claim
        self.interval = max(0.2, settings.job_stale_after_s / 6)
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                with session_scope(self.url) as session:
                    result = session.execute(
                        update(Job)
                        .where(
                            Job.id == self.claim.job_id,
                            Job.attempts == self.claim.attempt,
                            Job.status == "running",
                        )
                        .values(heartbeat_at=utcnow())
                    )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    return
            except Exception:  # a missed beat is retried at the next interval
                log.exception("heartbeat for job %s failed", self.claim.job_id)

    def stop(self) -> None:
        self._stopped.set()


def _mark_product(session: Any, job_id: str, status: str) -> None:
    job = session.get(Job, job_id)
    if job.kind == "training" and job.classifier_id:
        session.execute(
            update(Classifier).where(Classifier.id == job.classifier_id).values(status=status)
        )
    elif job.kind == "pretraining" and job.base_model_id:
        session.execute(
            update(BaseModel).where(BaseModel.id == job.base_model_id).values(status=status)
        )


# ----------------------------------------------------------------------------- data


def _load_images(settings: Settings, dataset_id: str, *, channels: int, image_size: int) -> Any:
    """The dataset as a `models.data.ImageSet` at the given channels and size."""
    import numpy as np
    import torch

    from models.data import ImageSet, decode_image
    from models.errors import DatasetError

    with session_scope(settings.resolved_database_url) as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise JobFailed(f"dataset {dataset_id} was deleted before the job ran")
        class_names = [c["name"] for c in dataset.classes]
        rows = session.execute(
            select(DatasetImage.sha256, DatasetImage.label, DatasetImage.filename)
            .where(DatasetImage.dataset_id == dataset_id)
            .order_by(DatasetImage.id)
        ).all()
    store = ImageStore(settings.images_dir)
    index = {name: i for i, name in enumerate(class_names)}
    arrays, labels = [], []
    for sha, label, filename in rows:
        try:
            arrays.append(decode_image(store.path(sha), channels=channels, image_size=image_size))
        except (DatasetError, FileNotFoundError) as exc:
            raise JobFailed(
                f"image {filename!r} of dataset {dataset_id} is unreadable: {exc}"
            ) from None
        labels.append(index[label])
    return ImageSet(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor(labels, dtype=torch.long),
        class_names=class_names,
        source=f"dataset:{dataset_id}",
    )


def holdout_size(count: int, fraction: float) -> int:
    """Images held out of a class of `count`: round(count * fraction), at least 1 when fraction
    > 0, but never the class's last training image."""
    return 0 if fraction <= 0 or count < 2 else min(count - 1, max(1, round(count * fraction)))


def holdout_split(labels: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per class, hold out `holdout_size` images. Returns (train, holdout) indices."""
    import numpy as np

    rng = np.random.default_rng(seed)
    train: list[int] = []
    hold: list[int] = []
    for c in sorted(set(labels)):
        idx = [i for i, lbl in enumerate(labels) if lbl == c]
        rng.shuffle(idx)
        k = holdout_size(len(idx), fraction)
        hold.extend(idx[:k])
        train.extend(idx[k:])
    return sorted(train), sorted(hold)


def training_steps(params: dict[str, Any], class_counts: list[int]) -> int:
    """SGD steps a classifier's job takes: on the training split when a holdout is measured,
    then on every image (the same count the job's progress reports)."""
    config = adapt_config(params)
    held = sum(holdout_size(n, params["holdout_fraction"]) for n in class_counts)
    total = config.steps_for(sum(class_counts))
    return total + (config.steps_for(sum(class_counts) - held) if held else 0)


def classification_metrics(true: list[int], pred: list[int], labels: list[str]) -> dict[str, Any]:
    n = len(labels)
    matrix = [[0] * n for _ in range(n)]
    for t, p in zip(true, pred, strict=True):
        matrix[t][p] += 1
    per_class = []
    for c in range(n):
        tp = matrix[c][c]
        predicted = sum(matrix[r][c] for r in range(n))
        support = sum(matrix[c])
        per_class.append(
            {
                "label": labels[c],
                "precision": round(tp / predicted, 4) if predicted else 0.0,
                "recall": round(tp / support, 4) if support else 0.0,
                "support": support,
            }
        )
    correct = sum(matrix[c][c] for c in range(n))
    return {
        "holdout_accuracy": round(correct / max(1, len(true)), 4),
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


# ----------------------------------------------------------------------------- the two jobs


def train_classifier(settings: Settings, job_id: str, reporter: Reporter) -> str:
    """Fine-tune the job's base model on its dataset; metrics from a holdout split, then the
    final classifier is trained on every image."""
    import torch

    from models.adaptation import adapt
    from models.checkpoint import load_base_model, save_classifier
    from models.data import to_float
    from models.training import resolve_device

    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.classifier_id and job.base_model_id
        params, dataset_id = dict(job.params), job.dataset_id
        classifier_id, base_id = job.classifier_id, job.base_model_id
        base = session.get(BaseModel, base_id)
        if base is None or base.status != "ready":
            raise JobFailed(f"base model {base_id} is not available")
        base_dir = base_model_dir(settings, base.storage)
    device = resolve_device(settings.worker_device)
    net, card = load_base_model(base_dir, device=device)
    data = _load_images(
        settings, dataset_id, channels=card["channels"], image_size=card["image_size"]
    )
    config = adapt_config(params)
    labels = data.labels.tolist()
    train_idx, hold_idx = holdout_split(labels, params["holdout_fraction"], params["seed"])
    total = training_steps(params, list(Counter(labels).values()))
    final_steps = config.steps_for(len(labels))
    x_all = to_float(data.images).to(device)
    y_all = data.labels.to(device)

    def progress_from(offset: int) -> Callable[[int, int, float], None]:
        return lambda step, _total, loss: reporter.progress(offset + step, total, loss)

    reporter.progress(0, total, None)
    metrics = None
    if hold_idx:
        reporter.set_phase("holdout_pass")
        tr = torch.tensor(train_idx, device=device)
        ho = torch.tensor(hold_idx, device=device)
        held_out = adapt(
            net,
            x_all[tr],
            y_all[tr],
            class_names=data.class_names,
            config=config,
            seed=params["seed"],
            progress=progress_from(0),
            should_stop=reporter.should_stop,
        )
        pred = held_out.predict_proba(x_all[ho]).argmax(1).cpu().tolist()
        metrics = classification_metrics([labels[i] for i in hold_idx], pred, data.class_names)
    reporter.set_phase("final_pass")
    clf = adapt(
        net,
        x_all,
        y_all,
        class_names=data.class_names,
        config=config,
        seed=params["seed"],
        progress=progress_from(total - final_steps),
        should_stop=reporter.should_stop,
    )
    # This attempt writes its own folder; only the attempt that still owns the job moves it into
    # place, inside the transaction that records the success, so a losing attempt can never
    # overwrite the winner's checkpoint.
    out = settings.classifiers_dir / classifier_id
    staged = settings.classifiers_dir / f".{classifier_id}.attempt-{reporter.claim.attempt}"
    shutil.rmtree(staged, ignore_errors=True)
    reporter.set_phase("saving")
    save_classifier(
        staged,
        clf.cpu(),
        {
            "backbone": card["backbone"],
            "channels": card["channels"],
            "image_size": card["image_size"],
            "base_model_id": base_id,
            "params": params,
            "metrics": metrics,
            "data": {"dataset_id": dataset_id, "num_images": len(data)},
        },
    )

    def record(session: Any) -> None:
        session.execute(
            update(Classifier)
            .where(Classifier.id == classifier_id)
            .values(status="ready", labels=data.class_names, metrics=metrics)
        )
        install_checkpoint(staged, out)

    try:
        won = reporter.finish("succeeded", metrics=metrics or {}, on_owned=record)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    if won:  # what attempts lost to a crash left behind
        for leftover in settings.classifiers_dir.glob(f".{classifier_id}.attempt-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    return "succeeded" if won else "lost"


def install_checkpoint(staged: Path, out: Path) -> None:
    """Move a checkpoint's files from `staged` into `out`, the weights before the card: predict
    reloads a classifier when its card changes, and each file is replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(staged.iterdir(), key=lambda f: f.name == "model.json")
    for f in files:
        os.replace(f, out / f.name)


def pretrain_base_model(settings: Settings, job_id: str, reporter: Reporter) -> str:
    """Pretrain a base model, resuming from its checkpoint when an earlier attempt left one."""
    from models.checkpoint import load_checkpoint
    from models.config import PretrainConfig
    from models.errors import CheckpointError
    from models.training import Progress, pretrain

    with session_scope(settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.base_model_id
        params, dataset_id, base_id = dict(job.params), job.dataset_id, job.base_model_id
        base = session.get(BaseModel, base_id)
        assert base is not None
        out_dir, name = base_model_dir(settings, base.storage), base.name
    config = PretrainConfig.from_dict(params)
    data = _load_images(
        settings, dataset_id, channels=config.channels, image_size=config.image_size
    )
    resumed_from = 0
    try:
        _, previous = load_checkpoint(out_dir)
        resumed_from = int(previous.get("training", {}).get("iteration", 0))
    except CheckpointError:
        pass

    def on_progress(p: Progress) -> None:
        reporter.progress(p.iteration, p.total, p.loss)

    reporter.progress(resumed_from, config.iterations, None)
    reporter.set_phase("pretraining")
    result = pretrain(
        config,
        data,
        device=settings.worker_device,
        out_dir=out_dir,
        resume=True,
        checkpoint_every_s=settings.checkpoint_every_s,
        progress=on_progress,
        should_stop=reporter.should_stop,
        extra_card={"name": name, "dataset_id": dataset_id},
    )
    card = read_card(out_dir)
    metrics = {
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "training_seconds": card["training"]["seconds"],
        "resumed_from_iteration": resumed_from,
        **(card.get("metrics") or {}),
    }

    def record(session: Any) -> None:
        session.execute(
            update(BaseModel).where(BaseModel.id == base_id).values(status="ready", metrics=metrics)
        )

    return "succeeded" if reporter.finish("succeeded", metrics=metrics, on_owned=record) else "lost"


# ----------------------------------------------------------------------------- recovery


def recover_orphans(settings: Settings) -> list[str]:
    """Make sure every unfinished job will run, whatever the broker lost. Returns the ids sent.

    - A running job whose worker went silent (crash, kill, OOM) is re-queued, or cancelled when a
      cancel was asked for, or failed after MAX_ATTEMPTS lost attempts.
    - A queued job whose message was never sent (broker down at submit or at a re-queue) is sent.
    - A queued job whose message no worker took within `queued_resend_after_s` is sent again: the
      broker may have lost it (Redis restarted without persistence). Sending twice is safe, since
      the conditional claim drops a duplicate.

    `enqueued_at` is written only after a send succeeded, so a broker outage during recovery
    leaves the job to the next pass instead of stranding it.
    """
    url = settings.resolved_database_url
    now = utcnow()
    stale = now - timedelta(seconds=settings.job_stale_after_s)
    resend_before = now - timedelta(seconds=settings.queued_resend_after_s)
    with session_scope(url) as session:
        lost = session.execute(
            select(Job.id, Job.attempts, Job.cancel_requested).where(
                Job.status == "running", Job.heartbeat_at < stale
            )
        ).all()
        # No worker claims a queued job with a cancel request (older versions re-queued a
        # cancelled running job whose worker died): it is cancelled here instead.
        cancelled = session.scalars(
            select(Job.id).where(Job.status == "queued", Job.cancel_requested.is_(True))
        ).all()
        for job_id in cancelled:
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued")
                .values(status="cancelled", finished_at=now)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                _mark_product(session, job_id, "cancelled")
    for job_id, attempts, cancel_requested in lost:
        _recover_lost(settings, job_id, attempts, cancel_requested, stale, now)
    with session_scope(url) as session:
        unsent = session.execute(
            select(Job.id, Job.kind).where(
                Job.status == "queued",
                or_(
                    and_(
                        Job.enqueued_at.is_(None),
                        # The API sends right after committing; give it that moment.
                        Job.created_at < now - timedelta(seconds=30),
                    ),
                    Job.enqueued_at < resend_before,
                ),
            )
        ).all()
    sent = []
    for job_id, kind in unsent:
        if send_queued(settings, job_id, kind):
            sent.append(job_id)
    return sent


def _recover_lost(
    settings: Settings,
    job_id: str,
    attempts: int,
    cancel_requested: bool,
    stale: Any,
    now: Any,
) -> None:
    """A running job whose worker is gone: cancelled, failed, or queued again (sent later by
    `recover_orphans`, with `enqueued_at` NULL until a send succeeds)."""
    owned_by_lost_worker = and_(Job.id == job_id, Job.status == "running", Job.heartbeat_at < stale)
    with session_scope(settings.resolved_database_url) as session:
        if cancel_requested:
            values: dict[str, Any] = {"status": "cancelled", "finished_at": now}
        elif attempts >= MAX_ATTEMPTS:
            values = {
                "status": "failed",
                "finished_at": now,
                "error": f"the worker running this job was lost {attempts} times",
            }
        else:
            values = {"status": "queued", "enqueued_at": None, "worker": None}
        result = session.execute(update(Job).where(owned_by_lost_worker).values(**values))
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return
        if values["status"] != "queued":
            _mark_product(session, job_id, values["status"])
        log.warning("job %s: its worker was lost; now %s", job_id, values["status"])


def send_queued(settings: Settings, job_id: str, kind: str) -> bool:
    """Send a queued job's message and record when; False (logged) when the broker is down."""
    try:
        enqueue(settings, TASK_OF_KIND[kind], job_id)
    except Exception:
        log.exception("could not send job %s; the next recovery pass retries", job_id)
        return False
    with session_scope(settings.resolved_database_url) as session:
        session.execute(
            update(Job).where(Job.id == job_id, Job.status == "queued").values(enqueued_at=utcnow())
        )
    log.warning("sent queued job %s again", job_id)
    return True
