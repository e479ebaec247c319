"""The holdout a classifier's job measures itself on: which images are held out, how many steps
the job takes with it, and the metrics on it. Pure functions, imported by the API (a new job's
step count) and by the worker (the split and the metrics)."""

from __future__ import annotations

from typing import Any

from app.service.params import adapt_config
from models.config import fit_steps


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
    held = sum(holdout_size(n, params["holdout_fraction"]) for n in class_counts)
    return fit_steps(adapt_config(params), sum(class_counts), held)


def classification_metrics(true: list[int], pred: list[int], labels: list[str]) -> dict[str, Any]:
    """Holdout accuracy, per-class precision and recall, and the confusion matrix (rows: true
    class, columns: predicted)."""
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
