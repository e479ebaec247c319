"""The training job: fine-tune a base model into a classifier, measured on a holdout first."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord, JobRecord
from app.service.base_models import base_model_dir
from app.service.holdout import classification_metrics, holdout_split, training_steps
from app.service.jobs import ArtifactStatus, JobPhase, JobStatus, set_artifact_status
from app.service.params import adapt_config
from worker.images import load_images
from worker.lifecycle import JobFailed, Reporter


def train_classifier(settings: Settings, job_id: str, reporter: Reporter) -> str:
    """Fine-tune the job's base model on its dataset; metrics from a holdout split, then the
    final classifier is trained on every image."""
    import torch

    from models.adaptation import adapt
    from models.checkpoint import load_base_model, save_classifier
    from models.data import to_float
    from models.training import resolve_device

    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, job_id)
        assert job is not None and job.classifier_id and job.base_model_id
        params, dataset_id = dict(job.params), job.dataset_id
        classifier_id, base_id = job.classifier_id, job.base_model_id
        base = session.get(BaseModelRecord, base_id)
        if base is None or base.status != ArtifactStatus.READY:
            raise JobFailed(f"base model {base_id} is not available")
        base_dir = base_model_dir(settings, base.storage)
    device = resolve_device(settings.worker_device)
    net, card = load_base_model(base_dir, device=device)
    data = load_images(
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
        reporter.set_phase(JobPhase.HOLDOUT_PASS)
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
    reporter.set_phase(JobPhase.FINAL_PASS)
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
    reporter.set_phase(JobPhase.SAVING)
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
        set_artifact_status(
            session, job_id, ArtifactStatus.READY, labels=data.class_names, metrics=metrics
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
