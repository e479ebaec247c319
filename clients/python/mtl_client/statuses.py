"""What a job is and where it stands, and what its classifier or base model became: the values
the API answers in `kind`, `status` and `phase`."""

from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    TRAINING = "training"  # fine-tunes a classifier
    PRETRAINING = "pretraining"  # trains a base model


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class JobPhase(StrEnum):
    """What a job is doing. A classifier's job trains twice: first on its training split to
    measure holdout accuracy, then from the base model again on every image, so its loss starts
    high a second time; the phase says why."""

    QUEUED = "queued"
    PREPARING = "preparing"
    CHOOSING_BASE_MODEL = "choosing_base_model"
    HOLDOUT_PASS = "holdout_pass"
    FINAL_PASS = "final_pass"
    PRETRAINING = "pretraining"
    SAVING = "saving"


class ArtifactStatus(StrEnum):
    """A classifier's or base model's status: what its job made of it."""

    QUEUED = "queued"
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"
