"""A training job whose request named no base model first chooses one: each candidate is scored
on the dataset (`models.selection.prototype_loo_accuracy`), the best is recorded on the job and
its classifier (app.service.base_model_choice), and the job then trains from it."""

from __future__ import annotations

from collections import Counter
from typing import Any

from app.infra.db import session_scope
from app.infra.errors import ServiceError
from app.infra.settings import Settings
from app.infra.tables import BaseModelRecord
from app.service import base_model_choice
from app.service.base_models import base_model_dir
from app.service.jobs import ArtifactStatus, JobPhase
from worker.images import load_images
from worker.lifecycle import JobFailed, Reporter


def choose_base_model(settings: Settings, job_id: str, choice: dict[str, Any], dataset_id: str,
                      reporter: Reporter, device: Any) -> Any:
    """Score the pending `choice`'s candidates, record the winner (if this attempt still owns
    the job) and return the dataset's images as the winner takes them (`load_images`)."""
    from models.checkpoint import load_base_model
    from models.data import to_float
    from models.errors import TrainingCancelled
    from models.selection import prototype_loo_accuracy, sample_per_class

    reporter.set_phase(JobPhase.CHOOSING_BASE_MODEL)
    scores: dict[str, tuple[float | None, float | None, int]] = {}
    images: dict[tuple[int, int], Any] = {}  # each size and channel count is decoded once
    by_candidate: dict[str, Any] = {}  # each candidate's images
    for candidate in choice["candidates"]:
        if reporter.should_stop():
            raise TrainingCancelled("the job was cancelled while it chose a base model")
        base_id = candidate["base_model_id"]
        directory = _ready_dir(settings, base_id)
        if directory is None:  # deleted or failed since the job was created: not a candidate
            continue
        net, card = load_base_model(directory, device=device)
        shape = (int(card["channels"]), int(card["image_size"]))
        if shape not in images:
            images[shape] = load_images(settings, dataset_id, channels=shape[0],
                                        image_size=shape[1])
        by_candidate[base_id] = images[shape]
        data = images[shape][0]
        keep = sample_per_class(data.labels, base_model_choice.PROXY_IMAGES_PER_CLASS, seed=0)
        score = prototype_loo_accuracy(net, to_float(data.images[keep]).to(device),
                                       data.labels[keep].to(device))
        scores[base_id] = (score.accuracy, score.margin, score.images)
    if not scores:
        raise JobFailed("none of the candidate base models is available any more")
    chosen = base_model_choice.pick(choice, scores)
    winner = by_candidate[chosen["chosen"]]
    _record(settings, job_id, reporter, chosen, list(Counter(winner[0].labels.tolist()).values()))
    return winner


def _ready_dir(settings: Settings, base_id: str) -> Any:
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(BaseModelRecord, base_id)
        if row is None or row.status != ArtifactStatus.READY:
            return None
        return base_model_dir(settings, row.storage)


def _record(settings: Settings, job_id: str, reporter: Reporter, choice: dict[str, Any],
            class_counts: list[int]) -> None:
    """The choice onto the job and its classifier, in one transaction, only while this attempt
    owns the job (a later attempt would otherwise find a choice another attempt is making)."""
    with session_scope(settings.resolved_database_url) as session:
        try:
            recorded = base_model_choice.record_outcome(session, settings, reporter.owned(), job_id,
                                                        choice, class_counts)
        except ServiceError as exc:  # the winner went away in the meantime
            raise JobFailed(str(exc)) from None
        if not recorded:
            session.rollback()
            raise JobFailed("this attempt no longer owns the job")
