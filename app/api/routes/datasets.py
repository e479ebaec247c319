"""Datasets: labelled images uploaded as a zip of class folders or as files with labels."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.forms import file_fields, read_form, text_field
from app.api.responses import errors
from app.deps import CurrentKey, SessionDep, SettingsDep, get_tenant_row
from app.errors import no_nul
from app.idempotency import IdempotencyKey
from app.pagination import DEFAULT_LIMIT, Cursor, Limit, Page, paginate
from app.schemas import DatasetPublic
from app.settings import Settings
from app.storage import ImageStore
from app.tables import DatasetImageRecord, DatasetRecord
from app.uploads import (
    CHUNK,
    CheckedUpload,
    LabelledFile,
    check_files,
    display_name,
    read_archive,
)

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=errors(401, 422))

MAX_LABEL = 200

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": "a .zip whose folders are the class names",
                        },
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "labels": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "one per file, in the same order",
                        },
                    },
                }
            }
        },
    },
}


def get_owned(session: SessionDep, key: CurrentKey, dataset_id: str) -> DatasetRecord:
    return get_tenant_row(session, key, DatasetRecord, dataset_id, "dataset")


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_UPLOAD_DOC,
    responses=errors(409, 413, 415),
)
async def create_dataset(
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> DatasetPublic:
    """Upload a dataset.

    Either `archive`, a .zip whose folders are the class names (one enclosing folder is
    fine), or repeated `files` with one `labels` value each, in the same order. Every image is
    decoded; the ones that are not images, too large or unreadable are left out and listed in
    `rejected` with the reason. At least 2 classes with a good image are needed. With an
    `Idempotency-Key`, a repeat within 24 h answers the first answer and stores nothing.
    """
    form = await read_form(request, max_files=settings.max_files)
    name = (text_field(form, "name", required=True) or "").strip()
    if not name or len(name) > 200:
        raise HTTPException(422, "'name' must be 1 to 200 characters")
    archives = file_fields(form, "archive")
    files = file_fields(form, "files")
    labels = form.getlist("labels")
    if archives and (files or labels):
        raise HTTPException(422, "send either 'archive' or 'files' with 'labels', not both")
    if len(archives) > 1:
        raise HTTPException(422, "send one 'archive'")
    if not archives and not files:
        raise HTTPException(
            422,
            "send an 'archive' (.zip of class folders) or 'files' with one 'labels' value each",
        )
    if files and len(labels) != len(files):
        raise HTTPException(
            422,
            f"{len(files)} files but {len(labels)} labels; send one "
            "'labels' value per file, in the same order",
        )
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL:
            raise HTTPException(422, f"label {i + 1} must be 1 to {MAX_LABEL} characters")
        no_nul(label, f"label {i + 1}")
    # Every file goes to its own temporary file in this folder, and is checked from there: the
    # upload's size never decides how much memory it takes. What is not stored is removed here.
    with tempfile.TemporaryDirectory(dir=settings.uploads_dir, prefix="upload-") as work:
        unpacked = await run_in_threadpool(
            unpack_upload,
            workdir=Path(work),
            archive=archives[0].file if archives else None,
            files=[
                (display_name(f.filename or f"file{i + 1}"), str(label).strip(), f.file)
                for i, (f, label) in enumerate(zip(files, labels, strict=True))
            ],
            settings=settings,
        )
        for f in unpacked.good:
            if len(f.label) > MAX_LABEL:
                raise HTTPException(
                    422, f"class name {f.label[:40]!r}... is over {MAX_LABEL} characters"
                )
            no_nul(f.label, f"class name {f.label[:40]!r}")
        checked = await run_in_threadpool(
            check_files, unpacked.good, max_pixels=settings.max_image_pixels
        )
        rejected = unpacked.rejected + checked.rejected
        counts = Counter(f.label for f in checked.good)
        if len(counts) < 2:
            why = "; ".join(f"{f}: {r}" for f, r in rejected[:5])
            raise HTTPException(
                422,
                "a dataset needs at least 2 classes with at least one good image; "
                f"this upload has {len(counts)}" + (f" (rejected: {why})" if why else ""),
            )
        # Writing files and rows blocks: off the event loop.
        ds = await run_in_threadpool(
            store_dataset,
            session=session,
            store=ImageStore(settings.images_dir),
            tenant=key.tenant,
            name=name,
            files=checked.good,
            rejected=rejected,
        )
    return DatasetPublic.from_record(ds)


def unpack_upload(
    *,
    workdir: Path,
    archive: BinaryIO | None,
    files: list[tuple[str, str, BinaryIO]],
    settings: Settings,
) -> CheckedUpload:
    """The upload's files, each streamed into its own file under `workdir`: an archive's members,
    or (file name, label, content) parts."""
    if archive is not None:
        return read_archive(
            archive,
            workdir=workdir,
            max_files=settings.max_files,
            max_uncompressed=settings.max_archive_uncompressed_bytes,
        )
    result = CheckedUpload()
    for i, (filename, label, content) in enumerate(files):
        target = workdir / f"part-{i}"
        content.seek(0)
        with target.open("wb") as out:
            shutil.copyfileobj(content, out, CHUNK)
        result.good.append(LabelledFile(filename, label, target))
    return result


def store_dataset(
    *,
    session: Session,
    store: ImageStore,
    tenant: str,
    name: str,
    files: list[LabelledFile],
    rejected: list[tuple[str, str]],
) -> DatasetRecord:
    """Store the image files, then the rows in one transaction; on any failure the files this
    call added (and no dataset uses) are removed again, so nothing is half-stored."""
    counts = Counter(f.label for f in files)
    created: set[str] = set()
    reused: dict[str, Path] = {}  # hash -> this upload's own copy (see app/storage.py)
    try:
        rows = []
        for f in files:
            digest, new = store.put_file(f.path)
            if new:
                created.add(digest)
            else:
                reused.setdefault(digest, f.path)
            rows.append(DatasetImageRecord(sha256=digest, filename=f.filename, label=f.label))
        ds = DatasetRecord(
            tenant=tenant,
            name=name,
            num_images=len(rows),
            classes=[{"name": c, "count": counts[c]} for c in sorted(counts)],
            rejected=[{"file": f, "reason": r} for f, r in rejected],
            images=rows,
        )
        session.add(ds)
        session.commit()
    except BaseException:
        session.rollback()
        # Another upload may have reused a file this one created and committed meanwhile.
        try:
            store.delete_unused(created, lambda digests: referenced(session, digests))
        except Exception:
            # Without the database we cannot tell which files are shared: orphans over losses.
            log.exception("could not remove the files of a failed upload; they stay unreferenced")
        raise
    store.restore(reused)
    return ds


def referenced(session: Session, digests: set[str]) -> set[str]:
    """The hashes among `digests` that committed dataset rows use."""
    return set(
        session.scalars(
            select(DatasetImageRecord.sha256).where(DatasetImageRecord.sha256.in_(digests))
        ).all()
    )


@router.get("", response_model=Page[DatasetPublic])
def list_datasets(
    session: SessionDep, key: CurrentKey, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
) -> Page[DatasetPublic]:
    """List datasets.

    The caller's tenant's datasets, oldest first, one page at a time, with their classes and
    image counts.
    """
    rows, next_cursor = paginate(
        session,
        select(DatasetRecord).where(DatasetRecord.tenant == key.tenant),
        created_at=DatasetRecord.created_at,
        id=DatasetRecord.id,
        limit=limit,
        cursor=cursor,
    )
    return Page(data=[DatasetPublic.from_record(ds) for ds in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses=errors(404))
def read_dataset(dataset_id: str, session: SessionDep, key: CurrentKey) -> DatasetPublic:
    """Read a dataset.

    Its classes with image counts, and every rejected file with the reason.
    """
    return DatasetPublic.from_record(get_owned(session, key, dataset_id))


@router.delete("/{dataset_id}", status_code=204, responses=errors(404))
def delete_dataset(
    dataset_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> Response:
    """Delete a dataset.

    The image files no other dataset uses are deleted too; classifiers trained on it keep
    working.
    """
    ds = get_owned(session, key, dataset_id)
    digests = set(
        session.scalars(
            select(DatasetImageRecord.sha256).where(DatasetImageRecord.dataset_id == ds.id)
        ).all()
    )
    session.delete(ds)
    session.commit()
    ImageStore(settings.images_dir).delete_unused(
        digests, lambda digests: referenced(session, digests)
    )
    return Response(status_code=204)
