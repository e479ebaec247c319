"""One-shot start-up steps: migrate the database, register built-in models and the admin key."""

from __future__ import annotations

from pathlib import Path

from app.infra.settings import Settings

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def migrate(settings: Settings) -> None:
    """`alembic upgrade head` on the configured database."""
    from alembic import command

    settings.ensure_dirs()
    command.upgrade(alembic_config(settings.resolved_database_url), "head")  # type: ignore[arg-type]


def initialize(settings: Settings) -> None:
    """Idempotent: register built-in base models and `MTL_ADMIN_KEY` (revoking the key of an
    earlier value of that setting)."""
    from sqlalchemy.exc import IntegrityError

    from app.infra.db import session_scope
    from app.service.base_models import register_builtin_models
    from app.service.security import register_key, revoke_env_keys

    settings.ensure_dirs()
    try:
        with session_scope(settings.resolved_database_url) as session:
            register_builtin_models(session=session, root=settings.resolved_builtin_dir)
            revoke_env_keys(session=session, keep=settings.admin_key)
            if settings.admin_key:
                register_key(session=session, key=settings.admin_key, tenant="admin", admin=True)
    except IntegrityError:
        pass  # another API node registered them at the same moment
    remove_abandoned_uploads(settings)


def remove_abandoned_uploads(settings: Settings, older_than_s: float = 24 * 3600) -> None:
    """Work folders of uploads an API process crashed in the middle of. Only old ones: another
    API node sharing the data directory may be writing a recent one."""
    import shutil
    import time

    cutoff = time.time() - older_than_s
    for folder in settings.uploads_dir.glob("upload-*"):
        if folder.stat().st_mtime < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
