"""A dataset's images: listed by class, thumbnails to show them, removing or relabelling one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from sqlalchemy import select

from app.api.deps import CurrentKey, SessionDep, SettingsDep
from app.api.responses import errors
from app.infra.storage import ImageStore
from app.infra.tables import DatasetImageRecord
from app.service.dataset_images import (
    MAX_THUMBNAIL,
    list_images,
    relabel_image,
    remove_image,
    thumbnail_png,
)
from app.service.datasets import get_owned
from app.service.pagination import Cursor
from app.service.schemas import DatasetImagePage, DatasetImagePublic, DatasetPublic, ImageLabel

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=errors(401, 422, 429))


@router.get("/{dataset_id}/images", response_model=DatasetImagePage, responses=errors(404))
def read_dataset_images(
    dataset_id: str,
    session: SessionDep,
    key: CurrentKey,
    label: Annotated[str | None, Query(max_length=1000, description="only this class")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Cursor = None,
) -> DatasetImagePage:
    """List a dataset's images.

    The stored images of a dataset (those that passed the upload's checks), in upload order,
    optionally of one class only, one page at a time (`next_cursor`, or `offset`).
    """
    ds = get_owned(session, key, dataset_id)
    return list_images(
        session=session, dataset_id=ds.id, label=label, offset=offset, limit=limit, cursor=cursor
    )


@router.get(
    "/{dataset_id}/images/{image_id}/thumbnail",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "the image, at most `size` pixels a side",
        },
        **errors(404),
    },
)
def read_thumbnail(
    dataset_id: str,
    image_id: int,
    session: SessionDep,
    key: CurrentKey,
    settings: SettingsDep,
    size: Annotated[int, Query(ge=8, le=MAX_THUMBNAIL)] = 96,
) -> Response:
    """A thumbnail of one image.

    The stored image shrunk to fit `size`×`size` pixels (never enlarged), as PNG.
    """
    ds = get_owned(session, key, dataset_id)
    sha = session.scalar(
        select(DatasetImageRecord.sha256).where(
            DatasetImageRecord.id == image_id, DatasetImageRecord.dataset_id == ds.id
        )
    )
    path = ImageStore(settings.images_dir).path(sha) if sha else None
    if path is None or not path.exists():
        raise HTTPException(404, f"image {image_id} of dataset {dataset_id} not found")
    session.close()
    png = thumbnail_png(path, size)
    # Stored images never change (the store is content-addressed): the browser may keep it.
    return Response(
        png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.delete("/{dataset_id}/images/{image_id}", response_model=DatasetPublic,
               responses=errors(404, 409))
def delete_dataset_image(
    dataset_id: str, image_id: int, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> DatasetPublic:
    """Remove an image from a dataset.

    Answers the dataset as it is now; recorded in its `edits`. 409 when it would leave fewer
    than 2 classes. Classifiers already trained keep working.
    """
    ds = get_owned(session, key, dataset_id)
    return DatasetPublic.from_record(remove_image(
        session=session, store=ImageStore(settings.images_dir), dataset=ds, image_id=image_id))


@router.patch("/{dataset_id}/images/{image_id}", response_model=DatasetImagePublic,
              responses=errors(404, 409))
def relabel_dataset_image(
    dataset_id: str, image_id: int, body: ImageLabel, session: SessionDep, key: CurrentKey
) -> DatasetImagePublic:
    """Relabel an image.

    Moves it to another class (a new one if no image has that label yet); recorded in the
    dataset's `edits`. 409 when it would leave fewer than 2 classes.
    """
    ds = get_owned(session, key, dataset_id)
    return relabel_image(session=session, dataset=ds, image_id=image_id, label=body.label)
