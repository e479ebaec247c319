"""A dataset's stored images: paged listing, and small PNG thumbnails for the console."""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.infra.errors import InvalidInput
from app.infra.tables import DatasetImageRecord
from app.service.pagination import decode_cursor, encode_cursor
from app.service.schemas import DatasetImagePage, DatasetImagePublic

MAX_THUMBNAIL = 256


def list_images(
    *,
    session: Session,
    dataset_id: str,
    label: str | None,
    offset: int,
    limit: int,
    cursor: str | None = None,
) -> DatasetImagePage:
    """One page of a dataset's images in upload order: after `cursor` when given, else from
    `offset`; `count` is every matching image."""
    where = [DatasetImageRecord.dataset_id == dataset_id]
    if label is not None:
        where.append(DatasetImageRecord.label == label)
    count = session.scalar(select(func.count()).select_from(DatasetImageRecord).where(*where)) or 0
    query = select(DatasetImageRecord).where(*where).order_by(DatasetImageRecord.id)
    if cursor is not None:
        (last_id,) = decode_cursor(cursor, 1)
        if not isinstance(last_id, int):
            raise InvalidInput(f"cursor {cursor!r} is not a cursor from this API")
        query = query.where(DatasetImageRecord.id > last_id)
    else:
        query = query.offset(offset)
    rows = session.scalars(query.limit(limit + 1)).all()
    next_cursor = encode_cursor([rows[limit - 1].id]) if len(rows) > limit else None
    return DatasetImagePage(
        data=[
            DatasetImagePublic(id=r.id, filename=r.filename, label=r.label) for r in rows[:limit]
        ],
        count=count,
        next_cursor=next_cursor,
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
