"""Small pure pieces of the service: holdout split, metrics, archive reading, settings."""

from __future__ import annotations

from io import BytesIO
from itertools import pairwise
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.infra.settings import Settings
from app.service.holdout import classification_metrics, holdout_split, training_steps
from app.service.params import adapt_config
from app.service.schemas import ClassifierParams, resolve_params
from app.service.uploads import CheckedUpload, UploadError, read_archive
from tests.utils.images import random_png, zip_bytes


def test_holdout_keeps_a_training_image_in_every_class() -> None:
    labels = [0] * 5 + [1] * 2 + [2]
    train, hold = holdout_split(labels, 0.2, seed=0)
    assert sorted(train + hold) == list(range(8))
    held = [labels[i] for i in hold]
    assert held.count(0) == 1 and held.count(1) == 1 and held.count(2) == 0
    assert {labels[i] for i in train} == {0, 1, 2}
    assert holdout_split(labels, 0.0, seed=0) == (list(range(8)), [])
    assert holdout_split([0, 1, 2], 0.5, seed=0) == ([0, 1, 2], [])


def test_classification_metrics() -> None:
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    assert m["holdout_accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"][0] == {"label": "a", "precision": 1.0, "recall": 0.5, "support": 2}
    assert m["per_class"][1] == {"label": "b", "precision": 0.6667, "recall": 1.0, "support": 2}


def test_archive_layouts(tmp_path: Path) -> None:
    def read(members: dict[str, bytes]) -> CheckedUpload:
        return read_archive(BytesIO(zip_bytes(members)), workdir=tmp_path, max_files=10,
                            max_uncompressed=10**7)

    flat = read({"a/1.png": random_png(1), "b/1.png": random_png(2)})
    assert sorted(f.label for f in flat.good) == ["a", "b"]
    assert flat.good[0].path.read_bytes() == random_png(1)  # each member in its own file
    enclosed = read({"top/a/1.png": random_png(1), "top/b/1.png": b"x"})
    assert sorted(f.label for f in enclosed.good) == ["a", "b"]
    with pytest.raises(UploadError, match="outside"):
        read({"a/../../x.png": b"x"})


def test_classifier_params_resolution() -> None:
    card = {"steps": 0, "lr": 0.0, "head_init": "prototype", "bn_stats": "frozen"}
    resolved = resolve_params(ClassifierParams(steps=7), card)
    assert resolved["steps"] == 7 and resolved["learning_rate"] == 0.0
    assert resolved["bn_stats"] == "frozen" and resolved["batch_size"] == 0
    from models.config import AdaptConfig

    assert resolve_params(ClassifierParams(), {})["steps"] == AdaptConfig().steps
    assert resolve_params(ClassifierParams(), {})["learning_rate"] == AdaptConfig().lr
    assert resolve_params(ClassifierParams(), {})["min_epochs"] == AdaptConfig().min_epochs == 0
    assert resolve_params(ClassifierParams(), {"min_epochs": 20})["min_epochs"] == 20
    assert resolve_params(ClassifierParams(min_epochs=3), {"min_epochs": 20})["min_epochs"] == 3


def test_adapt_config_from_stored_params() -> None:
    from models.config import AdaptConfig

    params = resolve_params(ClassifierParams(learning_rate=0.3, min_epochs=2), {"head_init": "prototype"})
    assert adapt_config(params) == AdaptConfig(lr=0.3, min_epochs=2, head_init="prototype")
    # Params stored by jobs queued before min_epochs and bn_stats existed keep their behaviour then.
    legacy = {k: v for k, v in params.items() if k not in ("min_epochs", "bn_stats")}
    assert (adapt_config(legacy).min_epochs, adapt_config(legacy).bn_stats) == (0.0, "frozen")
    # Steps: a holdout pass on what is left, then the final pass on every image.
    params = resolve_params(ClassifierParams(steps=5, batch_size=2, min_epochs=4), {})
    assert training_steps(params, [3, 3, 3]) == 12 + 18
    assert training_steps(params, [1, 1, 1]) == 6  # nothing to hold out: one pass
    assert training_steps({**params, "holdout_fraction": 0.0}, [3, 3, 3]) == 18


def test_settings_refuse_unsafe_production_values() -> None:
    with pytest.raises(ValidationError, match="24 characters"):
        Settings(environment="production", admin_key="short")
    with pytest.raises(ValidationError):
        Settings(environment="staging")
    assert Settings(environment="production", admin_key="x" * 24).admin_key


def test_abandoned_upload_folders_are_removed_at_start(tmp_path: Path) -> None:
    import os
    import time

    from app.service.bootstrap import remove_abandoned_uploads

    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    old, recent = settings.uploads_dir / "upload-old", settings.uploads_dir / "upload-new"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "member-0").write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    remove_abandoned_uploads(settings)
    assert not old.exists() and recent.exists()  # a recent one may be another node's


def test_the_embedded_broker_never_hands_out_a_half_written_message(tmp_path: Path) -> None:
    """A worker polling the queue folder while a message is written took it empty and crashed
    ("Unrecoverable error: JSONDecodeError"), and the job waited 10 minutes for the resend:
    kombu's own filesystem transport lost 7 of 300 such messages here."""
    import threading
    from queue import Empty

    from app.infra.broker import make_celery
    from app.infra.fs_broker import Transport

    app = make_celery(Settings(data_dir=tmp_path))
    count, got, errors = 300, [], []
    with app.connection_for_write() as writer, app.connection_for_read() as reader:
        transport = writer.transport
        put, get = writer.default_channel, reader.default_channel

        def consume() -> None:
            while len(got) + len(errors) < count:
                try:
                    got.append(get._get("training")["i"])
                except Empty:
                    pass
                except Exception as exc:  # what the worker died of
                    errors.append(repr(exc))

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        for i in range(count):
            put._put("training", {"i": i, "body": "x" * 200_000})
        thread.join(60)
    assert errors == [] and sorted(got) == list(range(count))
    assert isinstance(transport, Transport)


def test_a_mangled_api_key_is_refused_without_being_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key pasted with a trailing newline works; one with a space inside is refused without
    echoing it (the HTTP library's error printed the whole header, key included)."""
    from mtl_client import Client, ClientError

    secret = "mtl_abcd1234_S3CRETS3CRETS3CRET"
    monkeypatch.setenv("MTL_API_KEY", secret + "\r\n")
    assert Client("http://127.0.0.1:9")._http.headers["Authorization"] == f"Bearer {secret}"
    with pytest.raises(ClientError, match="copy it again") as refused:
        Client("http://127.0.0.1:9", api_key=secret[:12] + " " + secret[12:])
    assert "S3CRET" not in str(refused.value)


def test_the_embedded_broker_connects_without_a_hostname_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from app.infra.broker import make_celery
    from app.infra.settings import Settings

    app = make_celery(Settings(data_dir=tmp_path / "data"))
    with caplog.at_level("WARNING", logger="kombu.connection"), app.connection_for_write() as conn:
        assert conn.info()["transport"] == "app.infra.fs_broker:Transport"
    assert not [r for r in caplog.records if "No hostname" in r.getMessage()]


def test_a_loss_curve_keeps_a_long_job_whole_in_few_points() -> None:
    from worker.lifecycle import MAX_CURVE_POINTS, LossCurve

    curve = LossCurve()
    for step in range(1, 5001):
        curve.add(step, 1.0 / step, "final_pass")
    points = curve.points()
    steps = [p["step"] for p in points]
    assert MAX_CURVE_POINTS // 2 <= len(points) <= MAX_CURVE_POINTS
    gaps = {b - a for a, b in pairwise(steps)}
    assert len(gaps) == 1 and steps[0] == min(gaps)  # evenly spaced, from the start
    assert steps[-1] > 5000 - min(gaps)  # to the end
    assert all(p["loss"] == round(1.0 / p["step"], 5) for p in points)
    short = LossCurve()
    for step in range(1, 11):
        short.add(step, 0.5, "holdout_pass")
    assert [p["step"] for p in short.points()] == list(range(1, 11))  # a short job: every step


def test_answers_given_before_routing_are_counted_under_their_route(tmp_path: Path) -> None:
    """An idempotent replay or its 409 is answered before routing: the metrics and the access
    log still name its route template; only a path no route has is "unmatched"."""
    from app.api.middleware import route_template
    from app.main import create_app

    app = create_app(Settings(data_dir=tmp_path))

    def template(method: str, path: str) -> str:
        return route_template({"type": "http", "method": method, "path": path, "root_path": "",
                               "app": app, "headers": []})

    assert template("POST", "/v1/datasets") == "/v1/datasets"
    assert template("POST", "/v1/classifiers/abc/predict") == "/v1/classifiers/{classifier_id}/predict"
    assert template("DELETE", "/v1/admin/api-keys/1a2b") == "/v1/admin/api-keys/{prefix}"
    assert template("GET", "/v1/nothing/here") == "unmatched"


def test_rate_limits_count_in_the_process_while_their_storage_is_down(tmp_path: Path) -> None:
    """A Redis that cannot be reached does not fail requests (the API keeps working through a
    broker outage): each process counts alone until it is back."""
    from app.api.limits import RateLimits, TooMany
    from benchmarks.harness import free_port

    settings = Settings(data_dir=tmp_path, rate_limit_uploads="2/minute",
                        rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0")
    limits = RateLimits(settings)
    limits.hit("uploads", "acme")
    limits.hit("uploads", "acme")
    with pytest.raises(TooMany) as refused:
        limits.hit("uploads", "acme")
    assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
    limits.check_auth("10.0.0.1")  # no failures yet: no error either
