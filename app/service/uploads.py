"""Checking uploaded images and archives before anything is stored. Uses PIL only (no torch):
every image is fully decoded once, so truncated files and decompression bombs are caught here.

Memory stays bounded whatever the upload: every file (an archive member or an uploaded part) is
streamed to its own temporary file in a work folder, in chunks, and checked from there one at a
time; the store then moves the good ones into place."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from PIL import Image, UnidentifiedImageError

from app.infra.errors import ServiceError


class UploadError(ServiceError):
    """The upload as a whole is unusable; `status` is the HTTP status to answer with."""

    status = 422


CHUNK = 1024 * 1024


@dataclass
class LabelledFile:
    filename: str
    label: str
    path: Path  # a temporary file in the upload's work folder


@dataclass
class CheckedUpload:
    good: list[LabelledFile] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def check_image(source: bytes | Path, *, max_pixels: int, decode: bool = True) -> str | None:
    """None when `source` (bytes or a file) is a fully decodable image within the pixel limit,
    else the reason. With `decode=False` only the header is read (the caller decodes it next)."""
    if (source.stat().st_size if isinstance(source, Path) else len(source)) == 0:
        return "empty file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return (
                        f"image too large: {width}x{height} pixels is over the limit of "
                        f"{max_pixels} (MTL_MAX_IMAGE_PIXELS)"
                    )
                if width < 1 or height < 1:
                    return "image has no pixels"
                if decode:
                    img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image too large (over MTL_MAX_IMAGE_PIXELS={max_pixels})"
    except UnidentifiedImageError:
        return "not a decodable image"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"corrupt or truncated image: {exc}"
    return None


# The width of the stored file name (`DatasetImageRecord.filename`, String(1000)).
MAX_NAME = 1000


def display_name(name: str) -> str:
    """A file name as stored and shown: a NUL byte (not storable in PostgreSQL text) becomes
    U+FFFD, and a name over MAX_NAME characters keeps its start and its end (the extension)
    around an ellipsis. File names are only informational, so they are not refused for these."""
    name = name.replace("\x00", "\ufffd")
    if len(name) > MAX_NAME:
        half = (MAX_NAME - 1) // 2
        name = name[:half] + "\u2026" + name[-(MAX_NAME - 1 - half):]
    return name


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_parts(name: str) -> list[str]:
    """The member's path parts; raises on absolute paths and `..` (zip slip)."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UploadError(f"archive member {name!r} has an absolute path; refusing the archive")
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"archive member {name!r} points outside the archive; refusing it")
    return parts


def _checked_members(
    zf: zipfile.ZipFile, max_files: int, max_uncompressed: int
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """The archive's files with their safe path parts, or UploadError for the whole archive:
    none, too many, a symbolic link, or more declared bytes than the limit."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if not infos:
        raise UploadError("archive is empty")
    if len(infos) > max_files:
        raise UploadError(
            f"archive has {len(infos)} files; the limit is {max_files} (MTL_MAX_FILES)",
            status=413,
        )
    members: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in infos:
        parts = _safe_parts(info.filename)
        if _is_symlink(info):
            raise UploadError(
                f"archive member {info.filename!r} is a symbolic link; refusing the archive"
            )
        if parts:
            members.append((info, parts))
    declared = sum(i.file_size for i, _ in members)
    if declared > max_uncompressed:
        raise UploadError(
            f"archive unpacks to {declared} bytes; the limit is "
            f"{max_uncompressed} (MTL_MAX_ARCHIVE_UNCOMPRESSED_BYTES)",
            status=413,
        )
    return members


def read_archive(
    archive: BinaryIO, *, workdir: Path, max_files: int, max_uncompressed: int
) -> CheckedUpload:
    """Labelled files from a zip whose folders are the class names (one enclosing folder allowed),
    each member streamed to its own file under `workdir`.

    The archive is refused as a whole for unsafe members (absolute paths, `..`, symlinks), more
    than `max_files` members or more than `max_uncompressed` bytes once unpacked (zip bombs: the
    bytes are counted as they are written, not trusted from the zip directory); files outside a
    class folder and hidden files are listed as rejected.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UploadError("archive is not a readable .zip file") from None
    with zf:
        members = _checked_members(zf, max_files, max_uncompressed)
        # One enclosing folder (as made by zipping a folder) is stripped.
        visible = [p for _, p in members if not _hidden(p)]
        tops = {p[0] for p in visible}
        strip = 1 if len(tops) == 1 and any(len(p) >= 3 for p in visible) else 0
        result = CheckedUpload()
        total = 0
        for n, (info, parts) in enumerate(members):
            rel = parts[strip:]
            name = display_name("/".join(parts))
            if _hidden(parts):
                result.rejected.append((name, "hidden or system file"))
                continue
            if len(rel) < 2:
                result.rejected.append((name, "not inside a class folder"))
                continue
            target = workdir / f"member-{n}"
            try:
                with zf.open(info) as src:
                    total += copy_limited(src, target, max_uncompressed - total)
            except (
                zipfile.BadZipFile,
                OSError,
                ValueError,
                NotImplementedError,
                RuntimeError,
            ) as exc:
                target.unlink(missing_ok=True)
                result.rejected.append((name, f"cannot be extracted: {exc}"))
                continue
            except _OverBudget:
                raise UploadError(
                    "archive unpacks to more than the limit of "
                    f"{max_uncompressed} bytes (MTL_MAX_ARCHIVE_UNCOMPRESSED_BYTES)",
                    status=413,
                ) from None
            result.good.append(LabelledFile(name, "/".join(rel[:-1]), target))
    return result


class _OverBudget(Exception):
    pass


def copy_limited(src: IO[bytes], target: Path, budget: int) -> int:
    """Stream `src` into the file `target` chunk by chunk; raises _OverBudget past `budget`
    bytes. Returns the bytes written."""
    written = 0
    with target.open("wb") as out:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > budget:
                raise _OverBudget
            out.write(chunk)
    return written


def _hidden(parts: list[str]) -> bool:
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def check_files(files: list[LabelledFile], *, max_pixels: int) -> CheckedUpload:
    """Decode every file, one at a time; good ones are kept, others listed with the reason (and
    their temporary file removed at once)."""
    result = CheckedUpload()
    for f in files:
        reason = check_image(f.path, max_pixels=max_pixels)
        if reason is None:
            result.good.append(f)
        else:
            f.path.unlink(missing_ok=True)
            result.rejected.append((f.filename, reason))
    return result
