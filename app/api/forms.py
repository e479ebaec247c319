"""Reading multipart forms with the service's limits (routes parse them themselves so that too
many files is a clear 413 and every part is checked)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.infra.errors import no_nul


async def read_form(
    request: Request, *, max_files: int, setting: str = "MTL_MAX_FILES"
) -> FormData:
    """The multipart form of `request`; 413 naming `setting` for more than `max_files` files."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data")
    try:
        form = await request.form(max_files=max_files + 1, max_fields=max_files + 100)
    except StarletteHTTPException as exc:  # Starlette's parser answers 400 for everything
        if "Too many files" in str(exc.detail):
            raise HTTPException(
                413, f"too many files; the limit is {max_files} ({setting})"
            ) from None
        # A body that is not valid multipart is malformed input, a 422 like malformed JSON.
        raise HTTPException(422, f"malformed multipart body: {exc.detail}") from None
    uploads = [v for v in form.multi_items() if isinstance(v[1], UploadFile)]
    if len(uploads) > max_files:
        raise HTTPException(413, f"too many files; the limit is {max_files} ({setting})")
    return form


def text_field(form: FormData, name: str, *, required: bool = False) -> str | None:
    value: Any = form.get(name)
    if value is None:
        if required:
            raise HTTPException(422, f"form field '{name}' is required")
        return None
    if not isinstance(value, str):
        raise HTTPException(422, f"form field '{name}' must be text, not a file")
    return no_nul(value, f"form field '{name}'")


def file_fields(form: FormData, name: str) -> list[UploadFile]:
    values = form.getlist(name)
    if any(not isinstance(v, UploadFile) for v in values):
        raise HTTPException(422, f"every '{name}' part must be a file")
    return [v for v in values if isinstance(v, UploadFile)]
