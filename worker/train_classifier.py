"""The training job: fine-tune a base model into a classifier, measured on a holdout first."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord, ClassifierRecord, JobRecord
from app.service import base_model_choice
from app.service.base_models import base_model_dir
from app.service.classifiers import HOLDOUT_FILE
from app.service.holdout import classification_metrics, holdout_split, training_steps
from app.service.jobs import ArtifactStatus, JobPhase, JobStatus, set_artifact_status
from app.service.params import adapt_config
from worker.choose_base_model import choose_base_model
from worker.images import load_images
from worker.lifecycle import JobFailed, Reporter


@dataclass
class _Job:
    """What a training job's row says, read once."""

    params: dict[str, Any]
    dataset_id: str
    classifier_id: str
    base_id: str
    base_dir: Path
    choice: dict[str, Any] | None


def _read_job(settings: Settings, job_id: str) -> _Job:
    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, job_id)
        assert job is not None and job.classifier_id and job.base_model_id
        # A training job's parameters are its classifier's (stored there only).
        clf = session.get(ClassifierRecord, job.classifier_id)
        if clf is None:
            raise JobFailed(f"classifier {job.classifier_id} was deleted")
        base = session.get(BaseModelRecord, job.base_model_id)
        if base is None or base.status != ArtifactStatus.READY:
            raise JobFailed(f"base model {job.base_model_id} is not available")
        return _Job(dict(clf.params), job.dataset_id, job.classifier_id, job.base_model_id,
                    base_model_dir(settings, base.storage), job.base_model_choice)


def train_classifier(settings: Settings, job_id: str, reporter: Reporter) -> str:
    """Fine-tune the job's base model on its dataset; metrics from a holdout split, then the
    final classifier is trained on every image."""
    from models.checkpoint import load_base_model
    from models.training import resolve_device

    job = _read_job(settings, job_id)
    device = resolve_device(settings.worker_device)
    loaded = None
    if base_model_choice.is_pending(job.choice):
        assert job.choice is not None
        loaded = choose_base_model(settings, job_id, job.choice, job.dataset_id, reporter, device)
        job = _read_job(settings, job_id)
        reporter.set_phase(JobPhase.PREPARING)
    params = job.params
    net, card = load_base_model(job.base_dir, device=device)
    if loaded is None:
        loaded = load_images(
            settings, job.dataset_id, channels=card["channels"], image_size=card["image_size"]
        )
    data, rows = loaded
    labels = data.labels.tolist()
    _, hold_idx = holdout_split(labels, params["holdout_fraction"], params["seed"])
    total = training_steps(params, list(Counter(labels).values()))
    clf, predicted = _fit(net, data, hold_idx, params, total, reporter, device)
    metrics = holdout = None
    if predicted is not None:
        metrics = classification_metrics([labels[i] for i in hold_idx], predicted.labels,
                                         data.class_names)
        holdout = _holdout_rows(rows, hold_idx, labels, predicted, data.class_names)
    meta = {
        "backbone": card["backbone"],
        "channels": card["channels"],
        "image_size": card["image_size"],
        "base_model_id": job.base_id,
        "base_model_choice": base_model_choice.public(job.choice),
        "params": params,
        "metrics": metrics,
        "data": {"dataset_id": job.dataset_id, "num_images": len(data)},
        "open_set": {"score": "cosine similarity to the nearest class prototype",
                     "threshold": float(clf.open_set_threshold),
                     "calibrated_on": "holdout" if hold_idx else "training images"},
    }
    return _save_and_record(settings, job_id, job.classifier_id, clf, meta, data.class_names,
                            metrics, reporter, holdout)


def _holdout_rows(rows: list[tuple[int, str]], hold_idx: list[int], labels: list[int],
                  predicted: Any, class_names: list[str]) -> list[dict[str, Any]]:
    """One row per holdout image: which image (`rows`: each image's id and file name), its
    label, the first model's answer."""
    return [{"image_id": rows[i][0], "filename": rows[i][1], "label": class_names[labels[i]],
             "predicted": class_names[p], "probability": prob}
            for i, p, prob in zip(hold_idx, predicted.labels, predicted.probabilities, strict=True)]


def _fit(net: Any, data: Any, hold_idx: list[int], params: dict[str, Any], total: int,
         reporter: Reporter, device: Any) -> tuple[Any, Any]:
    """The classifier trained on every image, and (with a holdout) the holdout's predictions by
    one trained on the rest first; progress runs over both passes as one count."""
    from models.adaptation import fit_classifier
    from models.data import to_float

    def progress(step: int, _total: int, loss: float) -> None:
        reporter.progress(step, total, loss)

    reporter.progress(0, total, None)
    return fit_classifier(
        net, to_float(data.images).to(device), data.labels.to(device),
        class_names=data.class_names, config=adapt_config(params), seed=params["seed"],
        holdout=hold_idx, progress=progress, should_stop=reporter.should_stop,
        on_phase=lambda phase: reporter.set_phase(JobPhase(phase)),
    )


def _save_and_record(settings: Settings, job_id: str, classifier_id: str, clf: Any,
                     meta: dict[str, Any], class_names: list[str], metrics: dict[str, Any] | None,
                     reporter: Reporter, holdout: list[dict[str, Any]] | None) -> str:
    from models.checkpoint import save_classifier

    # This attempt writes its own folder; only the attempt that still owns the job moves it into
    # place, inside the transaction that records the success, so a losing attempt can never
    # overwrite the winner's checkpoint.
    out = settings.classifiers_dir / classifier_id
    staged = settings.classifiers_dir / f".{classifier_id}.attempt-{reporter.claim.attempt}"
    shutil.rmtree(staged, ignore_errors=True)
    reporter.set_phase(JobPhase.SAVING)
    save_classifier(staged, clf.cpu(), meta)
    if holdout is not None:
        (staged / HOLDOUT_FILE).write_text(json.dumps(holdout))

    def record(session: Any) -> None:
        set_artifact_status(
            session, job_id, ArtifactStatus.READY, labels=class_names, metrics=metrics
        )
        install_checkpoint(staged, out)

    try:
        won = reporter.finish(JobStatus.SUCCEEDED, metrics=metrics or {}, on_owned=record)
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
