"""Webhooks (issue 15): a finished job is POSTed to its callback_url, signed with HMAC-SHA256
over the timestamp and body, retried with backoff while the receiver fails, each try recorded
on the job."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.service.conftest import new_key
from tests.utils.images import small_zip
from tests.utils.training import create_classifier, run_job

SECRET = "a-webhook-secret-for-tests"


class Receiver:
    """A local HTTP receiver in a thread: answers `fail_first` requests with 500, then 204."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                receiver.times.append(time.monotonic())
                failing = len(receiver.received) <= receiver.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def _deliver_until(settings: Any, done: Any, timeout: float = 20) -> None:
    from worker.webhooks import deliver_due

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the webhook was not delivered in time"
        deliver_due(settings)
        time.sleep(0.02)


def test_finished_jobs_are_posted_signed_and_retried(make_settings: Any,
                                                     receiver: Receiver) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(webhook_secret=SECRET, webhook_allow_private=True, webhook_retry_base_s=0.2,
                             webhook_max_attempts=3)
    with TestClient(create_app(settings)) as client:
        user = {**new_key(settings, "acme"), "X-Request-ID": "hook-1"}
        created = create_classifier(client, user, callback_url=receiver.url)
        job_url = f"/v1/jobs/{created['job_id']}"
        assert client.get(job_url, headers=user).json()["webhook"] == {
            "url": receiver.url, "status": "pending", "attempts": []}
        # Nothing is sent before the job has finished.
        from worker.webhooks import deliver_due

        assert deliver_due(settings) == 0
        assert run_job(settings, created["job_id"]) == "succeeded"
        _deliver_until(settings, lambda: len(receiver.received) == 3)

        job = client.get(job_url, headers=user).json()
        assert job["webhook"]["status"] == "delivered"
        assert [a["status_code"] for a in job["webhook"]["attempts"]] == [500, 500, 204]
        assert "500" in job["webhook"]["attempts"][0]["error"]
        # Exponential backoff: the second try waits at least the base, the third twice that,
        # although deliver_due is called every 20 ms.
        first, second, third = receiver.times
        assert second - first >= 0.2 and third - second >= 0.4
        # Each tenant verifies with its own key, which signs nobody else's deliveries.
        answer = client.get("/v1/webhooks/signing-secret", headers=user)
        assert answer.headers["cache-control"] == "no-store"  # a secret: no cache keeps it
        signing = answer.json()
        assert signing["tenant"] == "acme"
        other = client.get("/v1/webhooks/signing-secret", headers=new_key(settings, "globex")).json()
        assert other["secret"] != signing["secret"] and SECRET not in signing["secret"]
        for n, (headers, body) in enumerate(receiver.received, start=1):
            expected = hmac.new(signing["secret"].encode(),
                                headers["X-MTL-Timestamp"].encode() + b"." + body,
                                hashlib.sha256).hexdigest()
            assert headers["X-MTL-Signature"] == f"sha256={expected}"
            # The Standard Webhooks form, checked by its own library (tolerance: 5 minutes);
            # every retry is the same message.
            verified = Webhook(signing["secret"]).verify(body, {
                k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")})
            assert verified["id"] == created["job_id"]
            assert headers["webhook-id"] == f"msg_{created['job_id']}"
            with pytest.raises(WebhookVerificationError):
                Webhook(other["secret"]).verify(body, {k: headers[k] for k in (
                    "webhook-id", "webhook-timestamp", "webhook-signature")})
            assert abs(int(headers["X-MTL-Timestamp"]) - time.time()) < 60
            assert headers["X-MTL-Delivery-Attempt"] == str(n)
            assert headers["X-Request-ID"] == "hook-1"
            sent = json.loads(body)
            assert sent["id"] == created["job_id"] and sent["status"] == "succeeded"
        assert deliver_due(settings) == 0  # delivered: never sent again

        # A job cancelled while queued is finished too; a receiver that keeps failing is given
        # up on after webhook_max_attempts tries.
        receiver.fail_first = 100
        other = create_classifier(client, user, callback_url=receiver.url)
        client.post(f"/v1/jobs/{other['job_id']}/cancel", headers=user)
        _deliver_until(settings, lambda: client.get(
            f"/v1/jobs/{other['job_id']}", headers=user).json()["webhook"]["status"] == "failed")
        hook = client.get(f"/v1/jobs/{other['job_id']}", headers=user).json()["webhook"]
        assert len(hook["attempts"]) == 3
        assert json.loads(receiver.received[-1][1])["status"] == "cancelled"


def test_pretraining_jobs_call_back_too(make_settings: Any, receiver: Receiver) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(webhook_secret=SECRET, webhook_allow_private=True, webhook_retry_base_s=0.01)
    receiver.fail_first = 0
    with TestClient(create_app(settings)) as client:
        admin = new_key(settings, "ops", admin=True)
        ds = client.post("/v1/datasets", headers=admin, data={"name": "s"},
                         files={"archive": ("s.zip", small_zip())}).json()["id"]
        r = client.post("/v1/admin/pretraining-jobs", headers=admin, json={
            "name": "b", "dataset_id": ds, "algorithm": "protonet", "callback_url": receiver.url,
            "params": {"ways": 3, "shots": 1, "queries": 2, "iterations": 5}})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        client.post(f"/v1/jobs/{job_id}/cancel", headers=admin)
        _deliver_until(settings, lambda: len(receiver.received) == 1)
        headers, body = receiver.received[0]
        key = client.get("/v1/webhooks/signing-secret", headers=admin).json()["secret"]
        expected = hmac.new(key.encode(), headers["X-MTL-Timestamp"].encode() + b"." + body,
                            hashlib.sha256).hexdigest()
        assert headers["X-MTL-Signature"] == f"sha256={expected}"
        sent = json.loads(body)
        assert sent["id"] == job_id and sent["kind"] == "pretraining" and sent["status"] == "cancelled"
        hook = client.get(f"/v1/jobs/{job_id}", headers=admin).json()["webhook"]
        assert hook["status"] == "delivered" and [a["status_code"] for a in hook["attempts"]] == [204]


def test_callback_url_needs_the_secret_and_a_url(client: Any, user: dict) -> None:
    r = client.post("/v1/classifiers", headers=user,
                    json={"name": "c", "dataset_id": "x", "callback_url": "not a url"})
    assert r.status_code == 422 and "callback_url" in r.json()["detail"]
    ds = client.post("/v1/datasets", headers=user, data={"name": "s"},
                     files={"archive": ("s.zip", small_zip())}).json()["id"]
    r = client.post("/v1/classifiers", headers=user, json={
        "name": "c", "dataset_id": ds, "callback_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 422 and "MTL_WEBHOOK_SECRET" in r.json()["detail"]
    assert client.get("/v1/jobs", headers=user).json()["data"] == []
    r = client.get("/v1/webhooks/signing-secret", headers=user)
    assert r.status_code == 409 and "MTL_WEBHOOK_SECRET" in r.json()["detail"]
    assert client.get("/v1/webhooks/signing-secret").status_code == 401


def test_a_receiver_that_never_ends_its_answer_holds_nothing_up(make_settings: Any) -> None:
    """The receiver answers 200 and then trickles its body forever: the try is recorded as
    delivered within the timeout (the worker's one webhook thread is not held)."""
    import socket

    from fastapi.testclient import TestClient

    from app.main import create_app
    from worker.webhooks import deliver_due

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while not stop.wait(0.2):
            try:
                conn.sendall(b"x")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    settings = make_settings(webhook_secret=SECRET, webhook_allow_private=True, webhook_timeout_s=1.0)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        created = create_classifier(client, user,
                                    callback_url=f"http://127.0.0.1:{listener.getsockname()[1]}/")
        client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=user)
        delivering = threading.Thread(target=deliver_due, args=(settings,), daemon=True)
        delivering.start()
        delivering.join(10)
        stop.set()
        assert not delivering.is_alive(), "the webhook thread is still reading the answer"
        hook = client.get(f"/v1/jobs/{created['job_id']}", headers=user).json()["webhook"]
        assert hook["status"] == "delivered" and hook["attempts"][0]["status_code"] == 200
    listener.close()


def test_a_receiver_that_trickles_its_status_line_holds_only_its_own_try(
        make_settings: Any, receiver: Receiver) -> None:
    """A receiver that sends its answer a byte every 0.3 s (an HTTP client's per-read timeout
    never fires) gets MTL_WEBHOOK_TIMEOUT_S for the whole try; another tenant's webhook due at
    the same moment goes out at once, beside it."""
    import socket

    from fastapi.testclient import TestClient

    from app.main import create_app
    from worker.webhooks import deliver_due

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            if stop.wait(0.3):
                break
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    receiver.fail_first = 0
    settings = make_settings(webhook_secret=SECRET, webhook_allow_private=True, webhook_timeout_s=1.0)
    with TestClient(create_app(settings)) as client:
        slow_tenant, fast_tenant = new_key(settings, "slow"), new_key(settings, "fast")
        slow = create_classifier(client, slow_tenant,
                                 callback_url=f"http://127.0.0.1:{listener.getsockname()[1]}/")
        fast = create_classifier(client, fast_tenant, callback_url=receiver.url)
        for job, headers in ((slow, slow_tenant), (fast, fast_tenant)):
            client.post(f"/v1/jobs/{job['job_id']}/cancel", headers=headers)
        started = time.monotonic()
        assert deliver_due(settings) == 2
        took = time.monotonic() - started
        stop.set()
        assert took < 3, took  # the drip alone would take 5.7 s
        fast_hook = client.get(f"/v1/jobs/{fast['job_id']}", headers=fast_tenant).json()["webhook"]
        assert fast_hook["status"] == "delivered"
        assert receiver.times[0] - started < 0.8  # not after the slow one's timeout
        slow_try = client.get(f"/v1/jobs/{slow['job_id']}",
                              headers=slow_tenant).json()["webhook"]["attempts"][0]
        assert slow_try["status_code"] is None and "no answer within 1 s" in slow_try["error"]
        assert slow_try["duration_ms"] < 2000, slow_try
    listener.close()


def test_a_url_that_cannot_be_sent_ends_failed(make_settings: Any) -> None:
    """A URL the API accepts but the HTTP client cannot encode (an IDN with an emoji) was an
    exception outside the tries: retried every 40 s forever, never `failed`."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(webhook_secret=SECRET, webhook_allow_private=True, webhook_retry_base_s=0.01,
                             webhook_max_attempts=2)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        created = create_classifier(client, user, callback_url="http://\N{GRINNING FACE}.com/")
        client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=user)
        job_url = f"/v1/jobs/{created['job_id']}"
        _deliver_until(settings, lambda: client.get(job_url, headers=user).json()[
            "webhook"]["status"] == "failed")
        attempts = client.get(job_url, headers=user).json()["webhook"]["attempts"]
        assert len(attempts) == 2 and all(a["status_code"] is None and a["error"] for a in attempts)


# Every spelling of an address inside: loopback (numeric tricks included), unspecified, private,
# unique-local, link-local (cloud metadata), IPv4-mapped, and this host's own name.
INSIDE = ["http://127.0.0.1:6379/", "http://localhost/", "http://[::1]/", "http://0.0.0.0/",
          "http://127.1/", "http://2130706433/", "http://0x7f000001/", "http://[fd00::1]/",
          "http://10.0.0.1/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data",
          "http://[::ffff:127.0.0.1]/", "http://224.0.0.1/"]


def test_callback_urls_cannot_reach_inside(make_settings: Any) -> None:
    """Refused at creation (422) for every inside address form; credentials refused too; a
    public one accepted."""
    import socket

    from fastapi.testclient import TestClient

    from app.main import create_app

    settings = make_settings(webhook_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        ds = client.post("/v1/datasets", headers=user, data={"name": "s"},
                         files={"archive": ("s.zip", small_zip())}).json()["id"]

        def create(url: str) -> Any:
            return client.post("/v1/classifiers", headers=user,
                               json={"name": "c", "dataset_id": ds, "callback_url": url})

        for url in [*INSIDE, f"http://{socket.gethostname()}/"]:
            r = create(url)
            assert r.status_code == 422, (url, r.text)
            assert r.json()["detail"] == ("callback_url: the URL's host is not a public internet "
                                          "address"), url
        r = create("http://user:secret@93.184.216.34/hook")
        assert r.status_code == 422 and "credentials" in r.json()["detail"]
        assert "secret" not in r.text.replace("a-webhook-secret", "")
        assert create("http://93.184.216.34/hook").status_code == 202


def test_a_name_that_turns_inside_at_delivery_is_refused(make_settings: Any,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: public when the job was created, loopback when the worker delivers. The
    try is recorded as refused, with no status, timing or error text of the inside target."""
    import socket

    from fastapi.testclient import TestClient

    from app.main import create_app

    real = socket.getaddrinfo
    answer = {"rebind.example": "93.184.216.34"}

    def fake(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answer:
            return real(answer[host], *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    settings = make_settings(webhook_secret=SECRET, webhook_max_attempts=1)
    with TestClient(create_app(settings)) as client:
        user = new_key(settings, "acme")
        created = create_classifier(client, user, callback_url="http://rebind.example:6379/")
        client.post(f"/v1/jobs/{created['job_id']}/cancel", headers=user)
        answer["rebind.example"] = "127.0.0.1"
        job_url = f"/v1/jobs/{created['job_id']}"
        _deliver_until(settings, lambda: client.get(job_url, headers=user).json()[
            "webhook"]["status"] == "failed")
        (attempt,) = client.get(job_url, headers=user).json()["webhook"]["attempts"]
        assert attempt["status_code"] is None and attempt["duration_ms"] == 0
        assert attempt["error"] == "refused: the URL's host is not a public internet address"


def test_the_address_forms_are_all_refused_by_the_check() -> None:
    """The check itself, address by address (with private allowed, the same all pass)."""
    from app.infra.outbound import RefusedTarget, pinned_url, resolve

    for url in INSIDE:
        with pytest.raises(RefusedTarget):
            resolve(url, allow_private=False)
        assert resolve(url, allow_private=True).address
    target = resolve("https://93.184.216.34:8443/x?y=1", allow_private=False)
    assert pinned_url(target) == ("https://93.184.216.34:8443/x?y=1", "93.184.216.34:8443")
