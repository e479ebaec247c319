"""The console in a real browser: headless Chromium (Debian's `chromium`, installed by `make
browser`) driven by Playwright, against a live server and a real worker process on the embedded
setup, with a small real dataset made from Omniglot. One user's whole flow, the 401 path, an
upload with rejected files, cancelling, the admin page, and /docs and /redoc with every request
outside this machine blocked. Each page's screenshot is written under test-artifacts/console/
(MTL_TEST_ARTIFACTS to change it; not committed)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, sync_playwright  # a dev dependency: never skipped

from app.infra.settings import Settings
from tests.service.conftest import IN_CI, REPO, REPO_BUILTINS, new_key
from tests.utils.images import data_root, omniglot_eval, random_png, zip_bytes
from tests.utils.processes import free_port

# Real processes or long runs: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("MTL_TEST_ARTIFACTS", REPO / "test-artifacts")) / "console"
CHARACTERS = (0, 7, 14)  # three characters of the Omniglot evaluation alphabets
TRAIN_DRAWINGS = range(6)  # uploaded; drawings 10 and up are kept for "try it"


def chromium_path() -> str:
    found = os.environ.get("MTL_TEST_CHROMIUM") or shutil.which("chromium")
    if found is None:
        message = "Debian's chromium is not installed (make browser, or apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true: the console must be tested in a browser")
        pytest.skip(message)
    return found


def write_glyphs(root: Path) -> Path:
    """A folder of class folders of PNGs, plus two files the upload must reject."""
    images = omniglot_eval()
    folder = root / "glyphs"
    for c in CHARACTERS:
        (folder / f"char{c}").mkdir(parents=True)
        for d in [*TRAIN_DRAWINGS, 10]:
            target = folder / f"char{c}" / f"{d}.png" if d in TRAIN_DRAWINGS else root / f"try-char{c}.png"
            Image.fromarray((images[c, d] * 255).astype(np.uint8)).save(target)
    (folder / f"char{CHARACTERS[0]}" / "notes.txt").write_text("not an image")
    (folder / f"char{CHARACTERS[1]}" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


class LiveServer:
    """The API (create_app) under uvicorn in a thread, on a free port."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from app.main import create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=self.port,
                                log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live(tmp_path: Path, start_worker: Any) -> Iterator[tuple[LiveServer, Settings]]:
    from app.service.bootstrap import migrate

    settings = Settings(data_dir=tmp_path / "data", builtin_models_dir=REPO_BUILTINS,
                        worker_device="cpu")
    migrate(settings)
    settings.ensure_dirs()
    start_worker(settings)  # starts importing torch while the browser signs in and uploads
    server = LiveServer(settings)
    yield server, settings
    server.stop()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def follow_training(page: Page, timeout: float, screenshot: str | None = None) -> set[str]:
    """The phases the progress panel showed until the results appeared (or the job ended)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phase = page.query_selector("#job-phase")
        text = (phase.text_content() or "") if phase else ""
        if text:
            if screenshot and text.startswith("Final pass") and not any(
                    s.startswith("Final pass") for s in seen):
                # The curve, unless the pass ended first (a quiet CI machine once finished it
                # before its first point was drawn, and the results replaced the panel).
                page.wait_for_function("() => document.querySelectorAll('#loss-curve polyline').length > 0"
                                       " || document.querySelector('#results, #try-it') !== null",
                                       timeout=30_000)
                shot(page, screenshot)
            seen.add(text.split(":")[0])
        if page.query_selector("#results") or page.query_selector("#try-it"):
            return seen
        time.sleep(0.15)
    raise AssertionError(f"training did not finish in {timeout} s; phases seen: {seen}")


def test_console_whole_flow_in_a_browser(live: tuple[LiveServer, Settings], tmp_path: Path) -> None:
    server, settings = live
    glyphs = write_glyphs(tmp_path)
    admin_key = new_key(settings, "ops", admin=True)["Authorization"].split()[1]
    requests: list[str] = []
    blocked: list[str] = []

    def only_this_machine(route: Any) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:  # as on a machine without internet; the test fails if anything tried
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", only_this_machine)
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: d.accept())
        page.set_default_timeout(20_000)

        # Sign-in: a wrong key is refused with the server's reason. Signed out, no nav or
        # "Sign out" shows (a flex rule once beat the `hidden` attribute).
        page.goto(server.url + "/")
        page.wait_for_selector("#sign-in-form")
        assert not page.is_visible("#nav") and not page.is_visible("#sign-out")
        page.fill("#api-key", "mtl_00000000_not-a-real-key")
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#sign-in-error:has-text('refused')")
        assert "unknown API key" in page.text_content("#sign-in-error")
        shot(page, "01-sign-in-refused")
        page.fill("#api-key", admin_key)
        page.click("#sign-in-form button[type=submit]")
        page.wait_for_selector("#dropzone")
        assert page.evaluate("sessionStorage.getItem('mtl.apiKey')") == admin_key
        assert page.is_visible("#nav-admin")

        # A folder upload: classes with counts and thumbnails, every rejected file with its reason.
        page.fill("#dataset-name", "glyphs")
        page.set_input_files("#folder-input", str(glyphs))
        page.wait_for_selector("#rejected")
        rejected = page.inner_text("#rejected")
        assert "glyphs/char0/notes.txt" in rejected and "glyphs/char7/broken.png" in rejected
        reasons = dict(line.split("\t") for line in rejected.splitlines()[1:])
        assert reasons["glyphs/char0/notes.txt"] == "not a decodable image"
        assert "truncated" in reasons["glyphs/char7/broken.png"].lower()
        assert not page.is_visible("#imbalance")  # every class has as many drawings
        rows = page.query_selector_all("#classes tbody tr")
        assert [r.inner_text().split("\t")[:2] for r in rows] == [  # classes sorted by name
            [name, str(len(TRAIN_DRAWINGS))] for name in sorted(f"char{c}" for c in CHARACTERS)]
        page.wait_for_function(
            "(n) => { const imgs = [...document.querySelectorAll('#classes img')];"
            " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
            # thumbnails are made on first request: 10 s was once too short in a CI run
            arg=len(CHARACTERS) * len(TRAIN_DRAWINGS), timeout=30_000)
        shot(page, "02-dataset")

        # A classifier: the base model's card, then live progress through both passes.
        page.click("text=Train a classifier")
        # By default the job chooses the base model; picking one shows its card.
        note = page.wait_for_selector("#clf-choice-note").inner_text()
        assert "handwriting" in note and "natural" in note, note
        page.select_option("#clf-base-model", "handwriting")
        page.wait_for_selector("#model-card:has-text('handwritten')")
        assert re.search(r"5-way 1-shot.*\d+\.\d%", page.inner_text("#model-card"), re.S)
        page.select_option("#clf-base-model", "")
        page.wait_for_selector("#clf-choice-note")
        page.fill("#clf-name", "glyphs")
        page.fill("#clf-steps", "100")  # long enough to watch both passes
        shot(page, "03-new-classifier")
        page.click("#clf-start")
        page.wait_for_selector("#progress-panel")
        phases = follow_training(page, timeout=120, screenshot="04-training")
        assert {"Holdout pass", "Final pass"} <= phases, phases

        # Results: holdout accuracy, per-class precision/recall, confusion-matrix heat map.
        page.wait_for_selector("#results")
        assert re.fullmatch(r"\d+\.\d%", page.inner_text("#holdout-accuracy"))
        assert len(page.query_selector_all("#per-class tbody tr")) == len(CHARACTERS)
        cells = [int(c.inner_text()) for c in page.query_selector_all("#confusion tbody td")]
        assert len(cells) == len(CHARACTERS) ** 2 and sum(cells) == len(CHARACTERS)  # 1 held out each
        shot(page, "05-results")
        assert "chosen for this dataset: handwriting" in page.inner_text("#base-model-choice")
        # The loss curve is kept: drawn with its axes once the classifier is ready.
        page.wait_for_selector("#final-curve polyline")
        ticks = [t.text_content() for t in page.query_selector_all("#final-curve text.tick")]
        assert {"step", "loss", "0"} <= set(ticks) and len(ticks) == 9, ticks
        assert page.text_content("#curve-holdout") == (
            f"holdout accuracy {page.inner_text('#holdout-accuracy')}")
        # The mistakes gallery: one picture per wrong holdout image (the confusion matrix's
        # off-diagonal cells), with its true and predicted labels, or a line saying there are none.
        n = len(CHARACTERS)
        wrong = sum(cells) - sum(cells[i * n + i] for i in range(n))
        gallery = page.wait_for_selector("#mistakes:not(:has-text('Loading'))").inner_text()
        figures = page.query_selector_all("#mistakes figure")
        assert len(figures) == wrong and ("No mistakes" in gallery) == (wrong == 0), gallery
        for figure in figures:
            assert re.search(r"true: char\d+\s+said: char\d+ \(\d+\.\d%\)", figure.inner_text())
        # The list says which classifier is which: date, base model, holdout accuracy.
        listed = page.inner_text("#classifier-list a.active")
        assert "handwriting" in listed and re.search(r"\d+\.\d%", listed), listed

        # Try it: drawings the classifier never saw, top-k labels with probability bars.
        page.set_input_files("#try-input", [str(tmp_path / f"try-char{c}.png") for c in CHARACTERS])
        page.wait_for_function("() => document.querySelectorAll('.prediction').length === 3")
        top = [p.query_selector(".bar b").inner_text() for p in page.query_selector_all(".prediction")]
        assert sum(t == f"char{c}" for t, c in zip(top, CHARACTERS, strict=True)) >= 2, top
        assert len(page.query_selector_all(".prediction .bar")) == 3 * 3  # top 3 each
        shot(page, "06-try-it")
        # A photo is none of these characters: "Unknown", with its score under the threshold.
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(next((data_root() / "miniimagenet-lite" / "test").glob("*/*.jpg"))
                          .read_bytes())
        page.set_input_files("#try-input", [str(photo), str(tmp_path / f"try-char{CHARACTERS[0]}.png")])
        page.wait_for_function("() => document.querySelectorAll('.prediction').length === 2")
        photo_answer, glyph_answer = page.query_selector_all(".prediction")
        said = re.search(r"Unknown – unlike every class \(score (-?\d\.\d\d), below the threshold "
                         r"-?\d\.\d\d\)", photo_answer.inner_text())
        assert said, photo_answer.inner_text()
        # The drawing looks far more like the classes (with 3 holdout drawings the threshold is
        # strict, so it may still fall under it).
        glyph = re.search(r"score (-?\d\.\d\d)", glyph_answer.inner_text())
        assert glyph is None or float(glyph.group(1)) > float(said.group(1)) + 0.1

        # Export: the button downloads the zip the API makes, for the format chosen.
        page.select_option("#export-format", "torchscript")
        with page.expect_download() as download_info:
            page.click("#export-button")
        download = download_info.value
        assert download.suggested_filename.endswith("-torchscript.zip")
        with zipfile.ZipFile(download.path()) as zf:
            assert {"model.pt", "labels.json", "preprocessing.json", "README.txt"} == set(zf.namelist())

        # Cancelling a long training job.
        page.goto(server.url + "/#/classifiers/new")
        page.fill("#clf-name", "long")
        page.fill("#clf-steps", "5000")
        page.click("#clf-start")
        page.wait_for_selector("#job-phase:has-text('pass')", timeout=60_000)
        page.wait_for_function("() => Number(document.querySelector('#job-step').textContent"
                               ".split('/')[0]) >= 20", timeout=60_000)
        # A reload draws the curve so far from the service, not from the steps seen since.
        page.reload()
        page.wait_for_selector("#loss-curve polyline", timeout=10_000)
        page.click("#job-cancel")
        page.wait_for_selector("#classifier-status:has-text('cancelled')", timeout=60_000)
        shot(page, "07-cancelled")

        # Admin: base models and the default, a pretraining job with its progress, API keys.
        page.click("#nav-admin")
        page.wait_for_selector("#admin-models tr[data-model=handwriting]")
        page.click("#admin-models tr[data-model=handwriting] button:has-text('Make default')")
        page.wait_for_selector("#admin-models tr[data-model=handwriting] .badge:has-text('default')")
        page.fill("#key-tenant", "newco")
        page.click("#key-form button[type=submit]")
        assert page.inner_text("#new-key").startswith("mtl_")
        page.wait_for_selector("#admin-keys td:has-text('newco')")
        page.click("#admin-keys tr:has(td:has-text('newco')) button:has-text('Revoke')")
        page.wait_for_selector("#admin-keys td:has-text('newco')", state="detached")
        page.fill("#pt-name", "tiny-base")
        page.fill("#pt-params", '{"iterations": 30, "ways": 3, "shots": 1, "queries": 1}')
        page.click("#pretrain-form button[type=submit]")
        page.wait_for_selector("#pretraining-jobs #progress-panel")
        shot(page, "08-admin-pretraining")
        status = page.wait_for_selector(
            "#admin-models tr:has(td:has-text('tiny-base')) .badge:is(.ready, .failed, .cancelled)",
            timeout=90_000)
        assert status.inner_text() == "ready", page.inner_text("#pretraining-jobs")
        shot(page, "09-admin")

        # The API docs render offline.
        page.goto(server.url + "/docs")
        page.wait_for_function("() => document.querySelectorAll('.opblock').length >= 24")
        shot(page, "10-docs")
        page.goto(server.url + "/redoc")
        page.wait_for_selector("h2:has-text('Follow a job live')")
        shot(page, "11-redoc")

        # An unbalanced dataset (4 and 1 images) is flagged, naming the small class.
        import httpx

        members = {f"u/big/{i}.png": random_png(i) for i in range(4)}
        members["u/small/0.png"] = random_png(9)
        unbalanced = httpx.post(f"{server.url}/v1/datasets", data={"name": "unbalanced"},
                                headers={"Authorization": f"Bearer {admin_key}"},
                                files={"archive": ("u.zip", zip_bytes(members))}).json()
        page.goto(server.url + f"/#/datasets/{unbalanced['id']}")
        note = page.wait_for_selector("#imbalance").inner_text()
        assert "1 to 4 images" in note and "small" in note, note
        # Editing it: an example of "big" relabelled "small" (3 and 2: balanced enough), one
        # removed, and a zip of two more added; each change listed.
        page.click("#classes tr[data-label=big] .thumbs img")
        page.fill("#image-label", "small")
        page.click("#image-relabel")
        page.wait_for_selector("#classes tr[data-label=small] td.num:has-text('2')")
        assert not page.is_visible("#imbalance")
        page.click("#classes tr[data-label=small] .thumbs img")
        page.click("#image-remove")
        page.wait_for_selector("#classes tr[data-label=small] td.num:has-text('1')")
        more = tmp_path / "more.zip"
        more.write_bytes(zip_bytes({"m/small/5.png": random_png(5), "m/new/6.png": random_png(6)}))
        page.set_input_files("#add-zip-input", str(more))
        page.wait_for_selector("#classes tr[data-label=new]")
        edits = page.inner_text("#edits")
        assert "added 2 images (new, small)" in edits and "relabelled" in edits and "removed" in edits
        shot(page, "13-dataset-edits")

        # A classifier that answers the first class for everything (a zero head, no steps): its
        # mistakes as pictures.
        auth = {"Authorization": f"Bearer {admin_key}"}
        glyphs = next(d for d in httpx.get(f"{server.url}/v1/datasets", headers=auth).json()["data"]
                      if d["name"] != "unbalanced")
        weak = httpx.post(f"{server.url}/v1/classifiers", headers=auth, json={
            "name": "weak", "dataset_id": glyphs["id"], "base_model_id": "natural",
            "params": {"steps": 0, "min_epochs": 0, "head_init": "zeros", "holdout_fraction": 0.5}}).json()
        page.goto(server.url + f"/#/classifiers/{weak['id']}")
        page.wait_for_selector("#classifier-status:has-text('ready')", timeout=60_000)
        wrong = httpx.get(f"{server.url}/v1/classifiers/{weak['id']}/holdout", headers=auth,
                          params={"mistakes": "true"}).json()["data"]
        assert wrong
        page.wait_for_function(
            "(n) => { const imgs = [...document.querySelectorAll('#mistakes figure img')];"
            " return imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0); }",
            arg=len(wrong), timeout=30_000)
        captions = [f.inner_text() for f in page.query_selector_all("#mistakes figcaption")]
        assert [c.split("\n")[:1] for c in captions] == [[f"true: {w['label']}"] for w in wrong]
        shot(page, "12-mistakes")

        # Retrain the glyphs classifier: version 2, side by side with version 1, answers predict.
        first = next(c for c in httpx.get(f"{server.url}/v1/classifiers", headers=auth).json()["data"]
                     if c["name"] == "glyphs")
        page.goto(server.url + f"/#/classifiers/{first['id']}")
        page.click("#retrain")
        page.wait_for_selector("#classifier-status:has-text('ready')", timeout=60_000)
        page.wait_for_selector("#versions tr[data-version='2'] td:has-text('answers predict')")
        rows = [r.inner_text().split("\t")[:2] for r in page.query_selector_all("#versions tbody tr")]
        assert rows == [["v1", "ready"], ["v2", "ready"]], rows
        shot(page, "14-versions")

        # A phone's width: the top bar wraps, nothing overflows sideways.
        page.set_viewport_size({"width": 420, "height": 800})
        page.goto(server.url + "/#/datasets")
        page.wait_for_selector("#nav")
        assert page.evaluate("document.documentElement.scrollWidth") <= 420
        page.set_viewport_size({"width": 1280, "height": 900})

        # Signing out forgets the key.
        page.goto(server.url + "/")
        page.click("#sign-out")
        page.wait_for_selector("#sign-in-form")
        assert page.evaluate("sessionStorage.getItem('mtl.apiKey')") is None
        browser.close()

    assert not errors, errors
    assert not blocked, f"requests outside this machine: {blocked}"
    assert not [u for u in requests if admin_key in u], "the API key appeared in a URL"
