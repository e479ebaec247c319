"""`mtl serve`, `mtl worker`, `mtl migrate`, `mtl keys create`: running the service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from app.cli.common import UsageError, command, setting_int
from app.cli.remote import client_command, list_keys, revoke_key, through_client

# ----------------------------------------------------------------------------- service


def service_settings() -> Any:
    from pydantic import ValidationError

    from app.infra.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        raise UsageError(f"bad MTL_* settings: {exc.errors()[0]['msg']}") from None


def add_migrate(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "migrate", "create or upgrade the service database (alembic upgrade head)")
    p.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    from app.service.bootstrap import initialize, migrate

    settings = service_settings()
    migrate(settings)
    initialize(settings)
    print(f"database at revision head: {_redacted(settings.resolved_database_url)}")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = command(sub, "serve", "run the API, with one training worker beside it")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=None,
                   help="the port to listen on (default: MTL_PORT, else 8000)")
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="API only (distributed mode: workers run `mtl worker` elsewhere)",
    )
    p.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not upgrade the database first (default: migrate SQLite, never PostgreSQL)",
    )
    p.add_argument(
        "--api-processes",
        type=setting_int("api_processes"),
        default=None,
        metavar="N",
        help="API processes sharing the port (default: MTL_API_PROCESSES, 1); each has its own "
        "caches and interpreter lock, so predict throughput scales with cores",
    )
    p.set_defaults(handler=_serve)


def _run_uvicorn(args: argparse.Namespace, settings: Any, worker: Any) -> None:
    """The API in this process, or in `settings.api_processes` processes under uvicorn's
    supervisor."""
    import uvicorn

    from app.main import create_app

    processes = settings.api_processes
    # A console following a job holds an event stream open: without a limit, shutting
    # down would wait for every browser to go away.
    if processes == 1:
        uvicorn.run(
            create_app(settings, embedded_worker=worker),
            host=args.host,
            port=args.port,
            timeout_graceful_shutdown=5,
            log_config=None,
        )
    else:
        # uvicorn's supervisor binds the port once and restarts an API process that dies;
        # this process keeps supervising the worker (the API processes only read its ready
        # file) and stops it when uvicorn returns.
        uvicorn.run(
            "app.main:app",
            host=args.host,
            port=args.port,
            workers=processes,
            timeout_graceful_shutdown=5,
            log_config=None,
        )


def _default_port() -> int:
    import os

    text = os.environ.get("MTL_PORT", "8000")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"MTL_PORT must be a port number (1-65535), got {text!r}")
    return int(text)


def _check_port_free(host: str, port: int) -> None:
    """UsageError, before anything starts, if another process listens on the port: uvicorn
    would log it as one JSON line and exit 0."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            raise UsageError(f"port {port} is already in use on {host} (another mtl serve?); pick "
                             f"another: mtl serve --port {port + 1}, MTL_PORT={port + 1}, or "
                             f"make run PORT={port + 1}") from None


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal

    from app.infra.embedded import EmbeddedWorker
    from app.infra.logs import configure_logging
    from app.service.bootstrap import migrate

    if args.api_processes is not None:
        # The API processes are spawned and read their settings from the environment.
        os.environ["MTL_API_PROCESSES"] = str(args.api_processes)
    args.port = args.port if args.port is not None else _default_port()
    _check_port_free(args.host, args.port)
    settings = service_settings()
    processes = settings.api_processes
    # Embedded SQLite is migrated here; a shared PostgreSQL is migrated by a one-shot `mtl migrate`.
    if not args.no_migrate and settings.resolved_database_url.startswith("sqlite"):
        migrate(settings)
    worker = None
    if not args.no_worker:
        # A worker that keeps dying stops the whole service (non-zero exit), as SIGTERM would.
        worker = EmbeddedWorker(settings, on_give_up=lambda: os.kill(os.getpid(), signal.SIGTERM))
        worker.start()
        if processes > 1:
            os.environ["MTL_EMBEDDED_WORKER_READY_FILE"] = str(worker.ready_file)
    if processes > 1:
        os.environ["MTL_SERVE_PARENT_PID"] = str(os.getpid())

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(0)

    # uvicorn re-raises the SIGTERM or SIGINT it caught once it has shut down; with these
    # handlers that ends in the `finally` below, so the worker is stopped instead of orphaned.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Ours from the first line: uvicorn's own logging config (log_config=None: none) would
    # print its start-up lines as plain text before the app configures logging.
    configure_logging(settings.log_format)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    # Through logging, so it keeps the log format (one JSON record by default, a line in text).
    logging.getLogger("mtl.serve").warning(
        "the console is at http://%s:%d/ (API docs: /docs); make a key with `mtl keys create "
        "--tenant NAME --admin` (data folder %s)", shown, args.port, settings.resolved_data_dir)
    try:
        _run_uvicorn(args, settings, worker)
    except SystemExit:
        pass
    finally:
        if worker is not None:
            worker.stop()
    if worker is not None and worker.gave_up:
        print("error: the embedded worker kept dying; see its log above", file=sys.stderr)
        return 1
    return 0


def add_worker(sub: argparse._SubParsersAction) -> None:
    # The worker is its own program (`python -m worker`, which owns its options); `mtl worker`
    # hands this process over to it, so the API's code never imports the worker's.
    p = command(sub, "worker", "run a training worker (Celery, solo pool): python -m worker",
                 add_help=False)
    p.set_defaults(handler=_worker, passes_on=True)


def _worker(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "worker", *args.passed_on])


def add_keys(sub: argparse._SubParsersAction) -> None:
    # `create` writes to the database directly: it makes the first key, before any key exists to
    # call the API with (it runs where MTL_DATABASE_URL or MTL_DATA_DIR reaches the database).
    # `list` and `revoke` go through the admin API, like every other client command: they work
    # from any machine that reaches the service, and a key revoked through the API stops working
    # at once on that API process instead of after its key cache (MTL_API_KEY_CACHE_S) expires.
    p = command(sub, "keys", "manage API keys")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")
    c = command(keys, "create", "create a key in the database and print it (shown only once)")
    c.add_argument("--tenant", required=True,
                   help="whose key: 1-200 letters, digits or _.@- (each tenant sees its own data)")
    c.add_argument("--admin", action="store_true", help="an admin key (may use /v1/admin)")
    c.set_defaults(handler=_keys_create)
    ls = client_command(keys, "list", "every tenant's keys, newest first (admin key, through the "
                        "API)")
    ls.set_defaults(handler=through_client(list_keys))
    rv = client_command(keys, "revoke", "revoke a key (admin key, through the API)",
                        json_flag=False)
    rv.add_argument("prefix", help="the key's prefix, as `mtl keys list` shows it")
    rv.set_defaults(handler=through_client(revoke_key))


def _keys_create(args: argparse.Namespace) -> int:
    import re

    from sqlalchemy.exc import OperationalError, ProgrammingError

    from app.infra.db import session_scope
    from app.service.security import create_api_key

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,200}", args.tenant):
        raise UsageError("--tenant must be 1-200 letters, digits or _.@-")
    settings = _service_with_its_data()
    try:
        with session_scope(settings.resolved_database_url) as session:
            key, _ = create_api_key(session=session, tenant=args.tenant, admin=args.admin)
    except (OperationalError, ProgrammingError) as exc:
        raise UsageError(f"cannot write the key (run `mtl migrate` first?): {exc.orig}") from None
    print(key)
    return 0


def _service_with_its_data() -> Any:
    """The settings of the service a key is made for. With the default embedded database and no
    MTL_DATA_DIR, the data folder is the nearest ./var holding one, here or in a folder above
    (`make run` serves from the repository's var/ wherever this runs in it); a database that does
    not exist is an error naming the folder, never a second, empty one."""
    import os

    settings = service_settings()
    if settings.database_url is not None:
        return settings
    if "MTL_DATA_DIR" not in os.environ:
        for folder in [Path.cwd(), *Path.cwd().parents]:
            if (folder / "var" / "mtl.sqlite3").exists():
                settings = settings.model_copy(update={"data_dir": folder / "var"})
                break
    database = settings.resolved_data_dir / "mtl.sqlite3"
    if not database.exists() and "MTL_DATA_DIR" in os.environ:
        raise UsageError(f"no service database in {settings.resolved_data_dir} (MTL_DATA_DIR): "
                         "start the service there first (`mtl serve`), or `mtl migrate` to make "
                         "an empty one")
    if not database.exists():
        raise UsageError(f"no service database in {settings.resolved_data_dir} or a var/ above "
                         "it: run this where `mtl serve` runs (make run uses var/ in the "
                         "repository), or set MTL_DATA_DIR to its data folder")
    print(f"the service's data folder: {settings.resolved_data_dir}", file=sys.stderr)
    return settings


