"""The pretraining job: train a base model, resuming from its checkpoint after a lost attempt.

Each attempt checkpoints into a folder of its own beside the base model's
(`.<id>.attempt-<n>`), starting from the furthest checkpoint an earlier attempt left; only the
attempt that still owns the job moves its files into the base model's folder, in the transaction
that records the success. An attempt that went silent (a frozen process, a cut connection) and
was replaced can therefore never overwrite the finished model, nor write beside its successor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord, JobRecord
from app.service.base_models import base_model_dir, read_card
from app.service.jobs import ArtifactStatus, JobPhase, JobStatus, set_artifact_status
from worker.images import load_images
from worker.lifecycle import Reporter
from worker.train_classifier import install_checkpoint


def pretrain_base_model(settings: Settings, job_id: str, reporter: Reporter) -> str:
    """Pretrain a base model, resuming from its checkpoint when an earlier attempt left one.
    With `params.processes` N > 1 the run is spread over N processes (`models.distributed`):
    this one and N - 1 it spawns, one GPU each, or on CPU sharing this worker's threads."""
    from models.config import PretrainConfig
    from models.distributed import launch
    from models.training import Progress

    with session_scope(settings.resolved_database_url) as session:
        job = session.get(JobRecord, job_id)
        assert job is not None and job.base_model_id
        params, dataset_id, base_id = dict(job.params), job.dataset_id, job.base_model_id
        base = session.get(BaseModelRecord, base_id)
        assert base is not None
        out_dir, name = base_model_dir(settings, base.storage), base.name
    config = PretrainConfig.from_dict(params)
    data, _ = load_images(settings, dataset_id, channels=config.channels,
                          image_size=config.image_size)
    staged = out_dir.parent / f".{out_dir.name}.attempt-{reporter.claim.attempt}"
    resumed_from = _stage_furthest(out_dir, staged)

    def on_progress(p: Progress) -> None:
        reporter.progress(p.iteration, p.total, p.loss)

    reporter.progress(resumed_from, config.iterations, None)
    reporter.set_phase(JobPhase.PRETRAINING)
    result = launch(
        config,
        data,
        device=settings.worker_device,
        out_dir=staged,
        resume=True,
        checkpoint_every_s=settings.checkpoint_every_s,
        progress=on_progress,
        should_stop=reporter.should_stop,
        extra_card={"name": name, "dataset_id": dataset_id},
    )
    card = read_card(staged)
    metrics = {
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "training_seconds": card["training"]["seconds"],
        "resumed_from_iteration": resumed_from,
        **(card.get("metrics") or {}),
    }

    def record(session: Any) -> None:
        set_artifact_status(session, job_id, ArtifactStatus.READY, metrics=metrics)
        install_checkpoint(staged, out_dir)

    won = reporter.finish(JobStatus.SUCCEEDED, metrics=metrics, on_owned=record)
    if won:  # every attempt's folder, this one's now empty
        for leftover in _attempt_folders(out_dir):
            shutil.rmtree(leftover, ignore_errors=True)
    return "succeeded" if won else "lost"


def _stage_furthest(out_dir: Path, staged: Path) -> int:
    """Copy the furthest checkpoint any attempt left into this attempt's `staged` folder; the
    iteration it resumes from (0: none usable, start afresh)."""
    from models.checkpoint import load_checkpoint
    from models.errors import CheckpointError

    shutil.rmtree(staged, ignore_errors=True)
    furthest = _furthest_checkpoint(out_dir)
    if furthest is None:
        return 0
    shutil.copytree(furthest, staged)
    try:
        _, previous = load_checkpoint(staged)
    except CheckpointError:
        shutil.rmtree(staged, ignore_errors=True)
        return 0
    return int(previous.get("training", {}).get("iteration", 0))


def _attempt_folders(out_dir: Path) -> list[Path]:
    return list(out_dir.parent.glob(f".{out_dir.name}.attempt-*"))


def _furthest_checkpoint(out_dir: Path) -> Path | None:
    """The folder, among the attempts' (and the base model's own, where an earlier version of
    this job wrote), whose card has trained furthest; None when none has a card."""
    best: tuple[int, Path] | None = None
    for folder in [out_dir, *_attempt_folders(out_dir)]:
        try:
            iteration = int(json.loads((folder / "model.json").read_text())["training"]["iteration"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if best is None or iteration > best[0]:
            best = (iteration, folder)
    return None if best is None else best[1]
