"""Alembic environment: the URL comes from the Alembic config when set (`mtl migrate`, tests),
else from `MTL_DATABASE_URL` / the default SQLite file."""

from __future__ import annotations

from alembic import context

from app.infra.db import get_engine
from app.infra.settings import get_settings
from app.infra.tables import Base

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    settings = get_settings()
    settings.ensure_dirs()
    return settings.resolved_database_url


def run_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    with get_engine(database_url()).connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
