"""Datasets: storing an upload's checked images with their rows, reading and deleting them. Nothing
is half-stored: files a failed upload added are removed again."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.infra.errors import InvalidInput, no_nul
from app.infra.settings import Settings
from app.infra.storage import ImageStore
from app.infra.tables import DatasetImageRecord, DatasetRecord, utcnow
from app.service.access import get_tenant_row
from app.service.security import VerifiedKey
from app.service.uploads import CHUNK, CheckedUpload, LabelledFile, check_files, read_archive

log = logging.getLogger(__name__)

MAX_LABEL = 200  # characters of a class name


def get_owned(session: Session, key: VerifiedKey, dataset_id: str) -> DatasetRecord:
    """The caller's dataset, or NotFound."""
    return get_tenant_row(session, key, DatasetRecord, dataset_id, "dataset")


def create_from_upload(
    *,
    session: Session,
    settings: Settings,
    tenant: str,
    name: str,
    archive: BinaryIO | None,
    files: list[tuple[str, str, BinaryIO]],
) -> DatasetRecord:
    """A dataset from an upload: its archive, or its (file name, label, content) parts. Every
    file goes to its own temporary file and is checked from there, so the upload's size never
    decides how much memory it takes; what is not stored is removed. InvalidInput (422) when
    a class name is unusable or fewer than 2 classes have a good image."""
    with tempfile.TemporaryDirectory(dir=settings.uploads_dir, prefix="upload-") as work:
        unpacked = unpack_upload(workdir=Path(work), archive=archive, files=files, settings=settings)
        _check_labels(unpacked.good)
        checked = check_files(unpacked.good, max_pixels=settings.max_image_pixels)
        rejected = unpacked.rejected + checked.rejected
        counts = Counter(f.label for f in checked.good)
        if len(counts) < 2:
            why = "; ".join(f"{f}: {r}" for f, r in rejected[:5])
            raise InvalidInput(
                "a dataset needs at least 2 classes with at least one good image; "
                f"this upload has {len(counts)}" + (f" (rejected: {why})" if why else "")
            )
        return store_dataset(
            session=session, store=ImageStore(settings.images_dir), tenant=tenant, name=name,
            files=checked.good, rejected=rejected,
        )


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
    """A new dataset of the image files (see `_store`)."""
    def new_dataset(rows: list[DatasetImageRecord]) -> DatasetRecord:
        ds = DatasetRecord(tenant=tenant, name=name, num_images=0, classes=[],
                           rejected=[{"file": f, "reason": r} for f, r in rejected], images=rows)
        count_classes(ds)
        session.add(ds)
        return ds

    return _store(session, store, files, new_dataset)


def add_images(*, session: Session, settings: Settings, dataset: DatasetRecord,
               archive: BinaryIO | None, files: list[tuple[str, str, BinaryIO]]
               ) -> tuple[DatasetRecord, int, list[tuple[str, str]]]:
    """Add an upload's images to a dataset, checked as an upload is; returns the dataset, how
    many were added and what was rejected. InvalidInput when no image is good."""
    with tempfile.TemporaryDirectory(dir=settings.uploads_dir, prefix="upload-") as work:
        unpacked = unpack_upload(workdir=Path(work), archive=archive, files=files, settings=settings)
        _check_labels(unpacked.good)
        checked = check_files(unpacked.good, max_pixels=settings.max_image_pixels)
        rejected = unpacked.rejected + checked.rejected
        if not checked.good:
            why = "; ".join(f"{f}: {r}" for f, r in rejected[:5])
            raise InvalidInput("no image of this upload could be added" + (f" ({why})" if why else ""))

        def extend(rows: list[DatasetImageRecord]) -> DatasetRecord:
            dataset.images.extend(rows)
            record_edit(dataset, "added", images=len(rows),
                        labels=sorted({r.label for r in rows}), rejected=len(rejected))
            return dataset

        ds = _store(session, ImageStore(settings.images_dir), checked.good, extend)
    return ds, len(checked.good), rejected


def _check_labels(files: list[LabelledFile]) -> None:
    for f in files:
        if len(f.label) > MAX_LABEL:
            raise InvalidInput(f"class name {f.label[:40]!r}... is over {MAX_LABEL} characters")
        no_nul(f.label, f"class name {f.label[:40]!r}")


# The last this many changes are kept on the dataset (its `revision` counts them all).
MAX_EDITS_KEPT = 100


def count_classes(dataset: DatasetRecord) -> None:
    """The dataset's `classes` and `num_images` from its image rows."""
    counts = Counter(r.label for r in dataset.images)
    dataset.classes = [{"name": c, "count": counts[c]} for c in sorted(counts)]
    dataset.num_images = sum(counts.values())


def record_edit(dataset: DatasetRecord, change: str, **detail: Any) -> None:
    """Count the change and keep it (with the classes after it) on the dataset."""
    count_classes(dataset)
    dataset.revision = (dataset.revision or 0) + 1
    entry = {"revision": dataset.revision, "at": utcnow().isoformat(), "change": change, **detail}
    dataset.edits = [*(dataset.edits or []), entry][-MAX_EDITS_KEPT:]


def _store(session: Session, store: ImageStore, files: list[LabelledFile],
           attach: Callable[[list[DatasetImageRecord]], DatasetRecord]) -> DatasetRecord:
    """Store the image files, then `attach` their rows to a dataset and commit in one
    transaction; on any failure the files this call added (and no dataset uses) are removed
    again, so nothing is half-stored."""
    created: set[str] = set()
    reused: dict[str, Path] = {}  # hash -> this upload's own copy (see app/infra/storage.py)
    try:
        rows = []
        for f in files:
            digest, new = store.put_file(f.path)
            if new:
                created.add(digest)
            else:
                reused.setdefault(digest, f.path)
            rows.append(DatasetImageRecord(sha256=digest, filename=f.filename, label=f.label))
        ds = attach(rows)
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


def delete_dataset_row(*, session: Session, store: ImageStore, dataset: DatasetRecord) -> None:
    """Delete the dataset's rows, then the image files no other dataset uses."""
    digests = set(
        session.scalars(
            select(DatasetImageRecord.sha256).where(DatasetImageRecord.dataset_id == dataset.id)
        ).all()
    )
    session.delete(dataset)
    session.commit()
    store.delete_unused(digests, lambda digests: referenced(session, digests))
