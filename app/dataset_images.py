"""A dataset's stored images: paged listing, and small PNG thumbnails for the console."""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.schemas import DatasetImagePage, DatasetImagePublic
from app.tables import DatasetImage

MAX_THUMBNAIL = 256


def list_images(
    *, session: Session, dataset_id: str, label: str | None, offset: int, limit: int
) -> DatasetImagePage:
    where = [DatasetImage.dataset_id == dataset_id]
    if label is not None:
        where.append(DatasetImage.label == label)
    count = session.scalar(select(func.count()).select_from(DatasetImage).where(*where)) or 0
    rows = session.scalars(
        select(DatasetImage).where(*where).order_by(DatasetImage.id).offset(offset).limit(limit)
    ).all()
    return DatasetImagePage(
        data=[DatasetImagePublic(id=r.id, filename=r.filename, label=r.label) for r in rows],
        count=count,
    )


def thumbnail_png(path: Path, size: int) -> bytes:
    """The image at `path` shrunk to fit `size`×`size` (never enlarged), as PNG. The stored
    images were decoded when uploaded, so this only fails if the file went missing."""
    from PIL import Image

    with Image.open(path) as img:
        img.thumbnail((size, size))
        out = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()
