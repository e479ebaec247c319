"""Pages for the list routes: `limit` items at a time, and a `next_cursor` that asks for the next
page (null on the last one). Keyset pagination: the cursor holds the sort key of the page's last
row, so rows created or deleted meanwhile never shift a page."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Query
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.infra.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="at most this many items")]
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="the `next_cursor` of the previous page; none: the first"),
]


def encode_cursor(values: list[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, count: int) -> list[Any]:
    """The sort key a cursor holds; 422 when it is not one this API made."""
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != count:
            raise ValueError
        return values
    except ValueError:  # binascii.Error and JSONDecodeError are ValueErrors
        raise InvalidInput(f"cursor {cursor!r} is not a cursor from this API") from None


def paginate(
    session: Session,
    query: Select[Any],
    *,
    created_at: InstrumentedAttribute[datetime],
    id: InstrumentedAttribute[Any],
    limit: int,
    cursor: str | None,
    newest_first: bool = False,
) -> tuple[list[Any], str | None]:
    """One page of `query`'s rows ordered by (`created_at`, `id`), and the next page's cursor."""
    if cursor is not None:
        raw_time, last_id = decode_cursor(cursor, 2)
        try:
            last_time = datetime.fromisoformat(str(raw_time))
        except ValueError:
            raise InvalidInput(f"cursor {cursor!r} is not a cursor from this API") from None
        # A crafted id of another type (or with a NUL) would reach the database as is, and
        # PostgreSQL refuses comparing a varchar with an integer: a 500 instead of a 422.
        kind = id.type.python_type
        if type(last_id) is not kind or (isinstance(last_id, str) and "\x00" in last_id):
            raise InvalidInput(f"cursor {cursor!r} is not a cursor from this API")
        # Nor an integer no column holds (SQLite: OverflowError, PostgreSQL: out of range).
        if isinstance(last_id, int) and not -(2**63) <= last_id < 2**63:
            raise InvalidInput(f"cursor {cursor!r} is not a cursor from this API")
        if newest_first:
            after = or_(created_at < last_time, and_(created_at == last_time, id < last_id))
        else:
            after = or_(created_at > last_time, and_(created_at == last_time, id > last_id))
        query = query.where(after)
    order = (created_at.desc(), id.desc()) if newest_first else (created_at, id)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)).all())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor([getattr(last, created_at.key), getattr(last, id.key)])
