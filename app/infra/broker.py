"""The broker: the Celery app and the one map from a job's kind to its task. The API sends jobs by
task name and never imports the worker; the worker builds its app here and adds the tasks. The
same for the embedded service and distributed workers. No torch here."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from app.infra.settings import Settings

TRAIN_CLASSIFIER = "mtl.train_classifier"
PRETRAIN_BASE_MODEL = "mtl.pretrain_base_model"
# A job's kind is also its queue's name: a worker started with `--queues pretraining` takes
# only pretraining jobs.
TASK_OF_KIND = {"training": TRAIN_CLASSIFIER, "pretraining": PRETRAIN_BASE_MODEL}
QUEUE_OF = {task: queue for queue, task in TASK_OF_KIND.items()}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for `settings`; the database, not a result backend, holds job state."""
    app = Celery("mtl", broker=settings.resolved_broker_url, set_as_current=False)
    transport: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout_s}
    filesystem = settings.resolved_broker_url.startswith("filesystem")
    if filesystem:
        settings.ensure_dirs()
        queue = str(settings.broker_folder / "queue")
        transport.update(
            data_folder_in=queue,
            data_folder_out=queue,
            processed_folder=str(settings.broker_folder / "processed"),
            # kombu's default is `control/` in the current directory, wherever that is.
            control_folder=str(settings.broker_folder / "control"),
            store_processed=False,
            # kombu polls the folder once a second by default: most of a small job's time to
            # result (docs/speed.md). Listing one local folder ten times a second is cheap.
            polling_interval=0.1,
        )
        # kombu's filesystem transport, with each message renamed into place once written.
        app.conf.broker_transport = "app.infra.fs_broker:Transport"
    app.conf.update(
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_routes={task: {"queue": queue} for task, queue in QUEUE_OF.items()},
        task_default_queue="training",
        task_serializer="json",
        accept_content=["json"],
        # The filesystem transport has no broadcast: remote control and events need it.
        worker_enable_remote_control=not filesystem,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache(maxsize=4)
def _cached(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def celery_for(settings: Settings) -> Celery:
    """One Celery app per distinct settings in this process."""
    return _cached(settings.model_dump_json())


def enqueue(settings: Settings, task_name: str, job_id: str) -> None:
    """Send a job to its queue by task name (callers commit the job row first). The task's id
    is the job's, so Celery's own log lines about it name the job."""
    celery_for(settings).send_task(
        task_name, args=[job_id], queue=QUEUE_OF[task_name], task_id=job_id
    )
