"""Errors a user can cause. The CLI prints them as one line and exits 2; the API maps them to 4xx."""


class MTLError(Exception):
    """Base class for expected, user-facing errors."""


class DatasetError(MTLError):
    """A data set path or its contents cannot be used."""


class ConfigError(MTLError):
    """An option or hyperparameter is invalid."""


class CheckpointError(MTLError):
    """A checkpoint is missing, unreadable or inconsistent."""


class TrainingCancelled(MTLError):
    """Training stopped because the caller asked it to."""
