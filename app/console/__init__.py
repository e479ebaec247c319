"""The web console: static files (HTML, CSS, plain JavaScript, no build step) served at `/`. It
talks to the same /v1 API as any client, with the API key kept in the browser's session storage."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install_console(app: FastAPI) -> None:
    app.mount("/console", StaticFiles(directory=STATIC), name="console")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        # Always revalidated, so a new release's console is picked up on reload.
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
