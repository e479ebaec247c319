"""The web console: static files (HTML, CSS, plain JavaScript, no build step) served at `/`. It
talks to the same /v1 API as any client, with the API key kept in the browser's session storage."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
# The page holds an API key: it runs only its own script and talks only to this server.
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class _ConsoleFiles(StaticFiles):
    """The console's files with its policy on every answer: the page is also reachable as
    /console/index.html, which must not be framed or run other scripts either."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
        return response


def install_console(app: FastAPI) -> None:
    app.mount("/console", _ConsoleFiles(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        # Always revalidated, so a new release's console is picked up on reload.
        return FileResponse(
            STATIC / "index.html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": CONSOLE_CSP},
        )
