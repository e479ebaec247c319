"""Datasets: labelled images uploaded as a zip of class folders or as files with labels."""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from app.api.deps import CurrentKey, SessionDep, SettingsDep, rate_limited
from app.api.forms import file_fields, read_form, text_field
from app.api.idempotency import IdempotencyKey
from app.api.responses import errors
from app.infra.errors import no_nul
from app.infra.storage import ImageStore
from app.infra.tables import DatasetRecord
from app.service.datasets import (
    MAX_LABEL,
    add_images,
    create_from_upload,
    delete_dataset_row,
    get_owned,
)
from app.service.pagination import DEFAULT_LIMIT, Cursor, Limit, paginate
from app.service.schemas import DatasetImagesAdded, DatasetPublic, Page, RejectedFile
from app.service.uploads import display_name

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=errors(401, 422, 429))


def _upload_doc(named: bool) -> dict[str, Any]:
    """The multipart body of an upload (a new dataset's has a `name`)."""
    properties: dict[str, Any] = {
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
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if named:
        schema.update(required=["name"], properties={"name": {"type": "string"}, **properties})
    return {"requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": schema}}}}


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_upload_doc(named=True),
    dependencies=[rate_limited("uploads")],
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
    name, archive, files = _upload_parts(form)
    # Unpacking, decoding and storing block: off the event loop, in one go.
    ds = await run_in_threadpool(
        create_from_upload, session=session, settings=settings, tenant=key.tenant, name=name,
        archive=archive, files=files,
    )
    return DatasetPublic.from_record(ds)


def _upload_parts(form: FormData, named: bool = True
                  ) -> tuple[str, BinaryIO | None, list[tuple[str, str, BinaryIO]]]:
    """The upload's name (when `named`), and either its archive or its (file name, label,
    content) parts."""
    name = (text_field(form, "name", required=named) or "").strip()
    if named and (not name or len(name) > 200):
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
    archive = archives[0].file if archives else None
    parts = [
        (display_name(f.filename or f"file{i + 1}"), str(label).strip(), f.file)
        for i, (f, label) in enumerate(zip(files, labels, strict=True))
    ]
    return name, archive, parts


@router.post(
    "/{dataset_id}/images",
    status_code=201,
    response_model=DatasetImagesAdded,
    openapi_extra=_upload_doc(named=False),
    dependencies=[rate_limited("uploads")],
    responses=errors(404, 409, 413, 415),
)
async def add_dataset_images(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> DatasetImagesAdded:
    """Add images to a dataset.

    An `archive` or `files` with `labels`, as for a new dataset, checked the same way: the
    images that pass are added (to existing classes or new ones), the others listed in
    `rejected`. Recorded in the dataset's `edits`; classifiers already trained keep theirs, a new
    one trains on the dataset as it is then.
    """
    dataset = get_owned(session, key, dataset_id)
    form = await read_form(request, max_files=settings.max_files)
    _, archive, files = _upload_parts(form, named=False)
    ds, added, rejected = await run_in_threadpool(
        add_images, session=session, settings=settings, dataset=dataset, archive=archive,
        files=files,
    )
    return DatasetImagesAdded(dataset=DatasetPublic.from_record(ds), added=added,
                              rejected=[RejectedFile(file=f, reason=r) for f, r in rejected])


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
    delete_dataset_row(session=session, store=ImageStore(settings.images_dir), dataset=get_owned(session, key, dataset_id))
    return Response(status_code=204)
