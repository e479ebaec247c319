"""Service settings: one pydantic-settings class read from `MTL_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the API and the worker read from the environment (prefix `MTL_`)."""

    model_config = SettingsConfigDict(env_prefix="MTL_", env_file=None, extra="ignore")

    environment: str = Field(default="development", description="'development' or 'production'")
    data_dir: Path = Field(
        default=Path("var"), description="images, checkpoints, SQLite and the broker"
    )
    database_url: str | None = Field(default=None, description="default: SQLite (WAL) in data_dir")
    broker_url: str | None = Field(default=None, description="default: kombu filesystem transport")
    builtin_models_dir: Path | None = Field(
        default=None, description="built-in base models to register; default: app/builtin_models"
    )
    admin_key: str | None = Field(
        default=None, description="registered as an admin key at start-up"
    )

    max_upload_bytes: int = Field(default=200 * MiB, ge=1, description="a request body larger: 413")
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="larger declared size: rejected"
    )
    max_files: int = Field(default=10_000, ge=1, description="files in one upload or archive")
    max_archive_uncompressed_bytes: int = Field(default=1024 * MiB, ge=1)
    max_predict_files: int = Field(default=256, ge=1)

    predict_cache_size: int = Field(
        default=1000, ge=1, description="loaded classifiers kept in memory (the byte bound usually binds first)"
    )
    predict_cache_bytes: int = Field(
        default=256 * MiB,
        ge=1,
        description="bytes of loaded classifiers' tensors kept in memory (with "
        "predict_cache_size, whichever bound is reached first evicts the least recently used)",
    )
    predict_batch_wait_ms: float = Field(
        default=5.0, ge=0, description="how long a predict waits to share a forward pass"
    )
    predict_max_batch: int = Field(default=64, ge=1, description="images in one forward pass")
    predict_device: str = Field(default="cpu", description="device the API predicts on")
    worker_device: str = Field(default="auto", description="device training jobs run on")
    checkpoint_every_s: float = Field(
        default=300.0, gt=0, description="pretraining checkpoint interval"
    )
    job_stale_after_s: float = Field(
        default=120.0, gt=0, description="a running job without a heartbeat this long is re-queued"
    )
    recovery_interval_s: float = Field(
        default=60.0, gt=0, description="how often workers look for them"
    )
    queued_resend_after_s: float = Field(
        default=600.0,
        gt=0,
        description="a queued job whose message no worker took this long is sent again "
        "(a broker that lost its queue; duplicates are dropped by the claim)",
    )
    training_time_limit_s: float = Field(
        default=3600.0, gt=0, description="a classifier job running longer fails"
    )
    pretraining_time_limit_s: float = Field(
        default=3 * 24 * 3600.0,
        gt=0,
        description="a pretraining attempt running longer checkpoints and fails",
    )
    max_pretrain_memory_bytes: int = Field(
        default=8 * 1024 * MiB,
        ge=1,
        description="pretraining runs whose estimated memory is larger are refused (422)",
    )
    predict_decode_threads: int = Field(
        default=2, ge=1, description="threads decoding predict images (bounded concurrency)"
    )
    broker_visibility_timeout_s: int = Field(default=7 * 24 * 3600, ge=60)
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch (OpenMP, MKL) threads in each process: the API, each worker and the "
        "training CLI commands; default: the cores divided between the processes mtl serve "
        "starts (its API processes and one worker)",
    )
    api_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="API processes `mtl serve` runs on its one port (uvicorn workers): each has "
        "its own interpreter lock, caches and torch threads, so predict scales with cores",
    )
    # Set by `mtl serve` for the API processes it starts when there are several (they are
    # spawned, so the environment is their only channel): its pid (they exit when it is gone)
    # and the file its embedded worker writes when ready (their /readyz reads it). Not user
    # settings.
    serve_parent_pid: int | None = None
    embedded_worker_ready_file: Path | None = None
    api_key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how long the API trusts a verified API key without asking the database "
        "again: a deleted key stops working within this time (0: every request asks)",
    )

    metrics_enabled: bool = Field(
        default=False,
        description="serve Prometheus metrics at /metrics (no key: expose it to your scraper only)",
    )
    idempotency_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="how long a POST's Idempotency-Key and first answer are kept",
    )
    idempotency_claim_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="after this long without an answer, a request holding an Idempotency-Key "
        "counts as abandoned (its process died) and a repeat runs in its place",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="HMAC-SHA256 key signing job webhooks; callback_url is refused without it",
    )
    webhook_max_attempts: int = Field(default=6, ge=1, le=50, description="tries per webhook")
    webhook_retry_base_s: float = Field(
        default=5.0, gt=0, description="wait before the 2nd try; doubled before each later one"
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="one try's whole time: connecting, sending and the "
        "answer's status line together")
    webhook_concurrency: int = Field(
        default=8, ge=1, le=64, description="webhook tries a worker makes at once (a slow "
        "receiver holds up only its own)")
    max_event_streams_per_key: int = Field(
        default=10, ge=1, description="open GET /v1/jobs/{id}/events streams one key may hold "
        "(per API process); past it: 429")
    max_event_streams: int = Field(
        default=200, ge=1, description="open event streams in all (per API process); past it: 429")
    auth_failures_per_minute: int = Field(
        default=30, ge=1, description="failed authentications one client address may make a "
        "minute; past it, keys not verified recently get 429 until it cools")
    rate_limit_uploads: str = Field(
        default="60/minute", description="uploads a tenant may make (new datasets, images added), "
        "in the `limits` notation: N/second|minute|hour|day")
    rate_limit_training: str = Field(
        default="60/minute", description="training and pretraining jobs a tenant may start "
        "(classifiers, versions, pretraining jobs)")
    rate_limit_exports: str = Field(
        default="30/minute", description="classifier exports a tenant may ask for")
    rate_limit_storage_url: str | None = Field(
        default=None, description="where the rate-limit counters live, shared by every API "
        "process that uses it: a `limits` storage URL (memory://, redis://...); default: the "
        "broker's Redis when the broker is Redis, else this process's memory")
    rate_limit_key_prefix: str = Field(
        default="mtl-limits", min_length=1, max_length=100,
        description="the counters' key prefix in that storage (two deployments sharing one "
        "Redis give theirs different prefixes)")
    webhook_allow_private: bool = Field(
        default=False,
        description="let callback_url reach loopback, private and link-local addresses "
        "(development and tests only: a tenant could then probe the service's own network)",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="'json': one JSON object per line and event; 'text': plain"
    )

    @model_validator(mode="after")
    def _rate_limits_parse(self) -> Settings:
        from limits import parse

        for name in ("rate_limit_uploads", "rate_limit_training", "rate_limit_exports"):
            try:
                parse(getattr(self, name))
            except ValueError:
                raise ValueError(f"MTL_{name.upper()} must read like '60/minute', got "
                                 f"{getattr(self, name)!r}") from None
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.environment == "production":
            if self.admin_key is not None and len(self.admin_key) < 24:
                raise ValueError("MTL_ADMIN_KEY must be at least 24 characters in production")
            if self.webhook_secret is not None and len(self.webhook_secret) < 24:
                raise ValueError("MTL_WEBHOOK_SECRET must be at least 24 characters in production")
        elif self.environment != "development":
            raise ValueError("MTL_ENVIRONMENT must be 'development' or 'production'")
        return self

    @property
    def resolved_torch_threads(self) -> int:
        from app.infra.threads import default_torch_threads

        return self.torch_threads or default_torch_threads(processes=self.api_processes + 1)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'mtl.sqlite3'}"

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_rate_limit_storage_url(self) -> str:
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        broker = self.resolved_broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else "memory://"

    @property
    def resolved_builtin_dir(self) -> Path:
        if self.builtin_models_dir is not None:
            return self.builtin_models_dir.expanduser().resolve()
        return Path(__file__).resolve().parents[1] / "builtin_models"

    @property
    def uploads_dir(self) -> Path:
        """Work folders of uploads in progress: on the images' filesystem, so a checked file is
        moved into the store, not copied."""
        return self.resolved_data_dir / "uploads"

    @property
    def images_dir(self) -> Path:
        return self.resolved_data_dir / "images"

    @property
    def classifiers_dir(self) -> Path:
        return self.resolved_data_dir / "classifiers"

    @property
    def base_models_dir(self) -> Path:
        return self.resolved_data_dir / "base_models"

    @property
    def metrics_dir(self) -> Path:
        """Where every process of this service writes its metrics (prometheus_client's
        multiprocess mode), unless PROMETHEUS_MULTIPROC_DIR says otherwise."""
        return self.resolved_data_dir / "metrics"

    def ensure_dirs(self) -> None:
        for d in (
            self.resolved_data_dir,
            self.images_dir,
            self.uploads_dir,
            self.classifiers_dir,
            self.base_models_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        if self.resolved_broker_url.startswith("filesystem"):
            (self.broker_folder / "queue").mkdir(parents=True, exist_ok=True)
            (self.broker_folder / "processed").mkdir(parents=True, exist_ok=True)
            (self.broker_folder / "control").mkdir(parents=True, exist_ok=True)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


class Resolved(NamedTuple):
    database_url: str
    classifiers_dir: Path


# By the id of a Settings object, which the entry keeps alive (so the id is never reused).
_resolved: dict[int, tuple[Settings, Resolved]] = {}


def resolved(settings: Settings) -> Resolved:
    """`settings.resolved_database_url` and `settings.classifiers_dir`, worked out once per
    Settings object: each resolves the data directory on the filesystem (`Path.resolve`, a few
    system calls), a tenth of an authenticated GET's CPU when done per request (issue 13)."""
    entry = _resolved.get(id(settings))
    if entry is None or entry[0] is not settings:
        entry = _resolved[id(settings)] = (
            settings, Resolved(settings.resolved_database_url, settings.classifiers_dir)
        )
    return entry[1]


def database_url(settings: Settings) -> str:
    return resolved(settings).database_url
