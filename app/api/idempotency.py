"""`Idempotency-Key` on the POST routes that create something: a repeat of a request (same key,
same tenant, same route and body) within `MTL_IDEMPOTENCY_TTL_S` (24 h) is answered with the
first answer, status and body, and creates nothing; the same key with another route or body is
a 409. Keys are per tenant.

An ASGI middleware, because it must see the whole body before the route runs (to refuse a
different one before anything is created) and the whole answer after (to store it). The body is
spooled to a temporary file, so a large upload does not sit in memory. Only successful answers
(2xx) are kept: an error frees the key, since nothing was created and a retry may succeed. The
first request's row is written before it runs, so a repeat that arrives meanwhile gets a 409
("still in progress") rather than creating a second time; its answer is stored before it is
sent, so a repeat sent after the first answer arrived is always a replay.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import IO, Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse, Response
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.middleware import BodyTooLarge
from app.infra.db import session_scope
from app.infra.settings import Settings
from app.infra.tables import IdempotencyRecord, utcnow
from app.service.security import KeyRevoked, hash_key, lookup_key

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# The routes that create something, and the fields of their answer never stored (a new API key
# is shown once: a replay answers it as null).
CREATING_ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/datasets": (),
    "/v1/classifiers": (),
    "/v1/admin/pretraining-jobs": (),
    "/v1/admin/api-keys": ("key",),
}
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces
_CHUNK = 1 << 16
_MAX_STORED_ANSWER = 1 << 20

# For the OpenAPI document and validation: the routes that honour the header take it.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="any string of printable ASCII (a UUID, say): a repeat of the request with "
        "this key within 24 h is answered with the first answer and creates nothing; the same "
        "key with another body is a 409",
    ),
]


class _Spooled:
    """The request body, in a temporary file (in memory while small), and its digest."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115

    def chunks(self) -> Iterator[bytes]:
        self.file.seek(0)
        while chunk := self.file.read(_CHUNK):
            yield chunk


def request_digest(
    method: str, path: str, content_type: str, read: Callable[[], Iterable[bytes]], size: int
) -> str:
    """What makes two requests the same: route and body. A JSON body counts by its content
    (key order and spacing aside); a multipart body by its parts as parsed (each part's headers
    and bytes), so neither the boundary each client draws at random nor a boundary-like string
    inside a file can make two different uploads look alike. `read()` gives the body's bytes."""
    h = hashlib.sha256(f"{method} {path}\n".encode())
    mime = content_type.split(";")[0].strip().lower()
    if mime == "application/json" and size <= _MAX_STORED_ANSWER:
        raw = b"".join(read())
        try:
            h.update(json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode())
        except (ValueError, UnicodeDecodeError):
            h.update(raw)
        return h.hexdigest()
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if mime.startswith("multipart/") and boundary:
        parts = hashlib.sha256(b"multipart\n")
        try:
            _hash_parts(parts, boundary.group(1).encode("latin-1"), read())
            h.update(parts.digest())
            return h.hexdigest()
        except Exception:  # not parseable: the route refuses it; its bytes stand for it here
            pass
    for chunk in read():
        h.update(chunk)
    return h.hexdigest()


def _hash_parts(h: Any, boundary: bytes, chunks: Iterable[bytes]) -> None:
    """Each part of a multipart body into `h`: its headers (names lower-cased) and its bytes."""
    from python_multipart.multipart import MultipartParser

    name, value = bytearray(), bytearray()

    def header_end() -> None:
        h.update(b"\x00h" + bytes(name).lower() + b":" + bytes(value).strip())
        name.clear()
        value.clear()

    parser = MultipartParser(boundary, callbacks={
        "on_part_begin": lambda: h.update(b"\x00part"),
        "on_header_field": lambda data, start, end: name.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": header_end,
        "on_headers_finished": lambda: h.update(b"\x00body"),
        "on_part_data": lambda data, start, end: h.update(data[start:end]),
    })
    for chunk in chunks:
        parser.write(chunk)
    parser.finalize()


class Claimed:
    """The first request with its key: it runs, and its answer is stored."""


class Replay:
    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        self.status, self.body, self.content_type = status, body, content_type


def claim_key(
    settings: Settings, *, tenant: str, key: str, digest: str
) -> Claimed | Replay | str:
    """Record this request as the key's first, or say what to answer instead: the stored
    answer (`Replay`) or why not (a message, answered with 409)."""
    cutoff = utcnow() - timedelta(seconds=settings.idempotency_ttl_s)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
    try:
        with session_scope(url) as session:
            session.add(IdempotencyRecord(tenant=tenant, key=key, request_hash=digest))
        return Claimed()
    except IntegrityError:
        pass
    with session_scope(url) as session:
        row = session.execute(
            select(IdempotencyRecord).where(
                IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == key
            )
        ).scalar_one_or_none()
        if row is None:  # its first request failed and freed the key just now
            return f"a request with {HEADER} {key!r} has just failed; send it again"
        if row.request_hash != digest:
            return (
                f"{HEADER} {key!r} was already used for a different request (another route "
                f"or body) in the last {settings.idempotency_ttl_s / 3600:g} h; use a new key "
                "for a new request"
            )
        if row.status_code is None:
            # The first request's process may have died before it could answer or free the key
            # (killed, out of memory, a host restart): past the bound a repeat takes over,
            # instead of the key answering 409 for the rest of its day.
            abandoned = utcnow() - timedelta(seconds=settings.idempotency_claim_timeout_s)
            taken = session.execute(
                update(IdempotencyRecord)
                .where(
                    IdempotencyRecord.id == row.id,
                    IdempotencyRecord.status_code.is_(None),
                    IdempotencyRecord.created_at < abandoned,
                )
                .values(created_at=utcnow())
                # Compared in SQL only: SQLite hands `row` back with a naive datetime.
                .execution_options(synchronize_session=False)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return Claimed()
            return (
                f"a request with {HEADER} {key!r} is still being processed; repeat it once "
                "that one has answered"
            )
        return Replay(row.status_code, row.response_body or b"", row.content_type or "")


def store_answer(
    settings: Settings, *, tenant: str, key: str, status: int | None, body: bytes,
    content_type: str,
) -> None:
    """Keep a successful answer for the key's repeats; any other outcome frees the key."""
    where = (IdempotencyRecord.tenant == tenant, IdempotencyRecord.key == key)
    with session_scope(settings.resolved_database_url) as session:
        if status is not None and 200 <= status < 300 and len(body) <= _MAX_STORED_ANSWER:
            session.execute(
                update(IdempotencyRecord)
                .where(*where)
                .values(status_code=status, response_body=body, content_type=content_type)
            )
        else:
            session.execute(delete(IdempotencyRecord).where(*where))


def _without(body: bytes, fields: tuple[str, ...]) -> bytes:
    if not fields:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    return json.dumps({k: (None if k in fields else v) for k, v in data.items()}).encode()


async def _tenant(scope: Scope, settings: Settings) -> str | None:
    """The caller's tenant, from its key (as `app.api.deps.get_current_key` finds it); None when
    the key is missing or unknown (the route then answers 401), or when the key may not use the
    route at all (a user key on /v1/admin: the route answers 403), so nothing is ever replayed
    to a caller the route itself would refuse."""
    headers = dict(scope.get("headers") or [])
    scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    digest = hash_key(token.strip())
    known = scope["app"].state.verified_keys.get(digest)
    if known is None:
        try:
            known = await run_in_threadpool(
                lookup_key, database_url=settings.resolved_database_url, digest=digest
            )
        except KeyRevoked:  # the route answers that it was revoked
            return None
    if known is None:
        return None
    if scope.get("path", "").startswith("/v1/admin/") and known.scope != "admin":
        return None
    return str(known.tenant)


class Idempotency:
    """The middleware; see the module's docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        raw_key = headers.get(HEADER.lower().encode())
        path = scope.get("path", "")
        if raw_key is None or scope.get("method") != "POST" or path not in CREATING_ROUTES:
            await self.app(scope, receive, send)
            return
        key = raw_key.decode("latin-1")
        if not _KEY.fullmatch(key):
            message = f"{HEADER} must be 1 to 255 printable ASCII characters without spaces"
            await JSONResponse({"detail": message}, 422)(scope, receive, send)
            return
        tenant = await _tenant(scope, self.settings)
        if tenant is None:
            await self.app(scope, receive, send)
            return
        body = _Spooled()
        try:
            size = await self._spool(receive, body)
        except BodyTooLarge as exc:
            await JSONResponse({"detail": str(exc)}, 413)(scope, receive, send)
            return
        try:
            content_type = headers.get(b"content-type", b"").decode("latin-1")
            digest = request_digest("POST", path, content_type, body.chunks, size)
            outcome = await run_in_threadpool(
                claim_key, self.settings, tenant=tenant, key=key, digest=digest
            )
            if isinstance(outcome, str):
                await JSONResponse({"detail": outcome}, 409)(scope, receive, send)
            elif isinstance(outcome, Replay):
                await Response(
                    outcome.body,
                    status_code=outcome.status,
                    media_type=outcome.content_type or None,
                    headers={REPLAYED_HEADER: "true"},
                )(scope, receive, send)
            else:
                await self._first(scope, receive, send, body, tenant=tenant, key=key)
        finally:
            body.file.close()

    async def _spool(self, receive: Receive, body: _Spooled) -> int:
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            body.file.write(chunk)
            if not message.get("more_body", False):
                break
        return size

    async def _first(
        self, scope: Scope, receive: Receive, send: Send, body: _Spooled, *, tenant: str,
        key: str,
    ) -> None:
        """Run the request on its spooled body, keep its answer."""
        replay_receive = _replaying(body, receive)
        status: int | None = None
        content_type = ""
        start: Message | None = None
        parts: list[bytes] = []
        answered = False

        async def capture(message: Message) -> None:
            # The answer is held back until it is stored: a client that repeats the request the
            # moment it has the first answer must get the replay, not "still being processed".
            nonlocal status, content_type, start, answered
            if message["type"] == "http.response.start":
                start = message
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"content-type":
                        content_type = value.decode("latin-1")
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            whole = b"".join(parts)
            await run_in_threadpool(
                store_answer, self.settings, tenant=tenant, key=key, status=status,
                body=_without(whole, CREATING_ROUTES[scope["path"]]), content_type=content_type,
            )
            answered = True
            await send(start)
            await send({"type": "http.response.body", "body": whole, "more_body": False})

        try:
            await self.app(scope, replay_receive, capture)
        finally:
            if not answered:  # it failed before a whole answer: nothing to keep, free the key
                await run_in_threadpool(
                    store_answer, self.settings, tenant=tenant, key=key, status=None, body=b"",
                    content_type="",
                )


def _replaying(body: _Spooled, receive: Receive) -> Receive:
    """A `receive` that hands the app the spooled body, chunk by chunk, then the real one's."""
    chunks = body.chunks()
    pending = next(chunks, b"")
    done = False

    async def replay_receive() -> Message:
        nonlocal pending, done
        if done:
            return await receive()
        following = next(chunks, None)
        message = {"type": "http.request", "body": pending, "more_body": following is not None}
        if following is None:
            done = True
        else:
            pending = following
        return message

    return replay_receive
