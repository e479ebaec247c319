"""A dataset's images as the ML core's `ImageSet`, read from the content-addressed store."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.storage import ImageStore
from app.infra.tables import DatasetImageRecord, DatasetRecord
from worker.lifecycle import JobFailed


def load_images(settings: Settings, dataset_id: str, *, channels: int,
                image_size: int) -> tuple[Any, list[tuple[int, str]]]:
    """The dataset as a `models.data.ImageSet` at the given channels and size, and each image's
    (row id, file name) in the same order, read in one query (the dataset may change later)."""
    import numpy as np
    import torch

    from models.data import ImageSet
    from models.errors import DatasetError
    from models.loaders import decode_image

    with session_scope(settings.resolved_database_url) as session:
        dataset = session.get(DatasetRecord, dataset_id)
        if dataset is None:
            raise JobFailed(f"dataset {dataset_id} was deleted before the job ran")
        rows = session.execute(
            select(DatasetImageRecord.sha256, DatasetImageRecord.label, DatasetImageRecord.filename,
                   DatasetImageRecord.id)
            .where(DatasetImageRecord.dataset_id == dataset_id)
            .order_by(DatasetImageRecord.id)
        ).all()
    # From the rows themselves (sorted, as the dataset lists them): one snapshot, whatever
    # changes the dataset meanwhile.
    class_names = sorted({label for _, label, _, _ in rows})
    store = ImageStore(settings.images_dir)
    index = {name: i for i, name in enumerate(class_names)}
    arrays, labels = [], []
    for sha, label, filename, _ in rows:
        try:
            arrays.append(decode_image(store.path(sha), channels=channels, image_size=image_size))
        except (DatasetError, FileNotFoundError) as exc:
            raise JobFailed(
                f"image {filename!r} of dataset {dataset_id} is unreadable: {exc}"
            ) from None
        labels.append(index[label])
    data = ImageSet(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor(labels, dtype=torch.long),
        class_names=class_names,
        source=f"dataset:{dataset_id}",
    )
    return data, [(int(i), str(f)) for _, _, f, i in rows]

