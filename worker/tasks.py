"""Celery tasks: thin wrappers that hand a job id to `worker.run.run_job`. Torch is first imported inside
a task, in the worker's own process (solo pool: no fork after CUDA)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from celery import Celery, bootsteps
from celery.signals import setup_logging, worker_ready

from app.infra.broker import PRETRAIN_BASE_MODEL, TRAIN_CLASSIFIER
from app.infra.settings import Settings

log = logging.getLogger(__name__)


def register_tasks(app: Celery, settings: Settings) -> None:
    """Add the two job tasks to `app`, and start orphan recovery once the worker is ready."""

    @app.task(name=TRAIN_CLASSIFIER, acks_late=True, ignore_result=True)
    def train_classifier(job_id: str) -> str:
        from worker.run import run_job

        return run_job(settings, job_id)

    @app.task(name=PRETRAIN_BASE_MODEL, acks_late=True, ignore_result=True)
    def pretrain_base_model(job_id: str) -> str:
        from worker.run import run_job

        return run_job(settings, job_id)

    class ResendOnConnect(bootsteps.StartStopStep):
        """Each time the worker's consumer starts, at start-up and again after every lost and
        regained broker connection, every queued job is sent again at once: the broker may
        have come back empty (Redis restarted without persistence), and waiting for
        `queued_resend_after_s` would leave those jobs idle for minutes. The claim drops the
        duplicates of messages that were not lost."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, consumer: object) -> None:
            threading.Thread(target=resend_queued, args=(settings,), daemon=True,
                             name="mtl-resend").start()

    app.steps["consumer"].add(ResendOnConnect)

    @worker_ready.connect(weak=False)
    def _start_recovery(**_: object) -> None:
        from worker.webhooks import webhook_loop

        threading.Thread(
            target=recovery_loop, args=(settings,), daemon=True, name="mtl-recovery"
        ).start()
        threading.Thread(
            target=webhook_loop, args=(settings,), daemon=True, name="mtl-webhooks"
        ).start()


def resend_queued(settings: Settings) -> None:
    """One recovery pass that sends every queued job again (`ResendOnConnect`)."""
    from worker.recovery import recover_orphans

    try:
        sent = recover_orphans(settings, resend_all_queued=True)
        if sent:
            log.info("connected to the broker: sent %d queued jobs again", len(sent))
    except Exception:
        log.exception("resending queued jobs failed; the periodic recovery will")


def recovery_loop(settings: Settings, stop: threading.Event | None = None) -> None:
    """Every `recovery_interval_s`, re-queue jobs whose worker was lost."""
    from worker.recovery import recover_orphans

    stop = stop or threading.Event()
    while True:
        try:
            recover_orphans(settings)
        except Exception:
            log.exception("orphan recovery failed; retrying")
        if stop.wait(settings.recovery_interval_s):
            return


def start_torch(settings: Settings) -> int:
    """Set this worker's compute threads (`MTL_TORCH_THREADS`) and import torch before taking
    jobs (the first job does not pay for the import; CUDA is still first touched in a task).
    Returns the thread count torch reports."""
    from app.infra.threads import limit_threads

    threads = settings.resolved_torch_threads
    limit_threads(threads)
    import torch

    # Again on torch itself: it caps the environment's value at the core count when it loads.
    # Jobs run in this thread (the solo pool).
    torch.set_num_threads(threads)
    return int(torch.get_num_threads())


def _prepare_process(settings: Settings, loglevel: str) -> None:
    """Logging, metrics, image limits and torch threads, once, before Celery starts."""
    from PIL import Image
    from sqlalchemy.engine import make_url

    from app.infra import metrics
    from app.infra.logs import configure_logging

    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    settings.ensure_dirs()
    level = getattr(logging, loglevel.upper(), logging.INFO)
    configure_logging(settings.log_format, level)

    @setup_logging.connect(weak=False)
    def _keep_our_logging(**_: object) -> None:
        """Connected, so Celery leaves logging as configured above (JSON lines, with the job's
        request id on the lines of each job)."""
    metrics.setup(settings)
    threads = start_torch(settings)
    log.warning(
        "worker: data dir %s, database %s, broker %s, torch threads %d",
        settings.resolved_data_dir,
        make_url(settings.resolved_database_url).render_as_string(hide_password=True),
        settings.resolved_broker_url.split("@")[-1],
        threads,
    )


def run_worker(
    settings: Settings,
    queues: list[str],
    *,
    loglevel: str = "INFO",
    ready_file: Path | None = None,
) -> None:
    """Run a worker in this process (the solo pool: one job at a time, CUDA-safe). With
    `ready_file`, this process's pid is written there once the worker takes jobs."""
    import os
    import socket

    from app.infra.broker import make_celery

    _prepare_process(settings, loglevel)
    app = make_celery(settings)
    register_tasks(app, settings)
    if ready_file is not None:

        @worker_ready.connect(weak=False)
        def _say_ready(**_: object) -> None:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.replace(ready_file)

    # Celery prints its shutdown line with print-like `safe_say`, past logging: logged instead,
    # so that every line of the worker's output is a log record (JSON by default).
    import celery.apps.worker as celery_worker

    celery_worker.safe_say = lambda msg, f=None: log.info(msg)  # type: ignore[assignment]
    app.worker_main(
        [
            "--quiet",  # no start-up banner: the line above says where the worker works
            "worker",
            "--pool",
            "solo",
            "--queues",
            ",".join(queues),
            "--loglevel",
            loglevel,
            "--hostname",
            f"mtl-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
