"""A dataset's stored images: paged listing, small PNG thumbnails for the console, and changing
one (removing or relabelling it; adding is `app.service.datasets.add_images`)."""

from __future__ import annotations

import io
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.infra.errors import InvalidInput, NotFound, ServiceError, no_nul
from app.infra.storage import ImageStore
from app.infra.tables import DatasetImageRecord, DatasetRecord
from app.service.datasets import MAX_LABEL, record_edit, referenced
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


def _image(dataset: DatasetRecord, image_id: int) -> DatasetImageRecord:
    for row in dataset.images:
        if row.id == image_id:
            return row
    raise NotFound(f"image {image_id} not found in dataset {dataset.id}")


def _keeps_two_classes(dataset: DatasetRecord, labels: list[str], change: str) -> None:
    if len(set(labels)) < 2:
        raise ServiceError(f"{change} would leave dataset {dataset.id} with fewer than 2 classes; "
                           "a dataset keeps at least 2", 409)


def remove_image(*, session: Session, store: ImageStore, dataset: DatasetRecord,
                 image_id: int) -> DatasetRecord:
    """Remove one image (recorded on the dataset); its file goes once no dataset uses it. 409
    when it would leave fewer than 2 classes."""
    row = _image(dataset, image_id)
    _keeps_two_classes(dataset, [r.label for r in dataset.images if r is not row],
                       f"removing image {image_id}")
    dataset.images.remove(row)
    record_edit(dataset, "removed", image_id=image_id, filename=row.filename, label=row.label)
    session.commit()
    store.delete_unused({row.sha256}, lambda digests: referenced(session, digests))
    return dataset


def relabel_image(*, session: Session, dataset: DatasetRecord, image_id: int,
                  label: str) -> DatasetImagePublic:
    """Give one image another label (recorded on the dataset; the same label changes nothing).
    InvalidInput for an unusable label, 409 when it would leave fewer than 2 classes."""
    label = label.strip()
    if not label or len(label) > MAX_LABEL:
        raise InvalidInput(f"'label' must be 1 to {MAX_LABEL} characters")
    no_nul(label, "'label'")
    row = _image(dataset, image_id)
    if row.label != label:
        _keeps_two_classes(dataset, [label if r is row else r.label for r in dataset.images],
                           f"relabelling image {image_id}")
        before, row.label = row.label, label
        record_edit(dataset, "relabelled", image_id=image_id, filename=row.filename,
                    label_before=before, label=label)
        session.commit()
    return DatasetImagePublic(id=row.id, filename=row.filename, label=row.label)
