"""The Python client (`mtl_client`) and the `mtl` client commands against one real embedded service
(`mtl serve`: API and worker processes, SQLite, real Omniglot images), started once for this
module: upload, train and wait, predict, jobs, API keys, and the errors a user meets."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mtl_client import ApiError, Client, ClientError

from app.cli.main import main
from app.infra.settings import Settings
from tests.service.conftest import REPO, new_key
from tests.service.test_cli import embedded_env, start_serve
from tests.utils.images import data_root, omniglot_png, omniglot_zip
from tests.utils.processes import free_port

# Real server and worker processes: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

CHARACTERS = [0, 40, 80]  # from three different evaluation alphabets
FAST = {"steps": 4, "min_epochs": 0}  # a few SGD steps: the tests check the plumbing, not skill


@dataclass
class Service:
    url: str
    settings: Settings
    admin_key: str
    user_key: str

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, key or self.user_key)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, builtin_dir: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("client")
    env = embedded_env(tmp, builtin_dir)
    serve = start_serve(env, tmp / "serve.log")
    proc, url = serve.proc, serve.url
    settings = Settings(data_dir=tmp / "data", builtin_models_dir=builtin_dir)
    admin = new_key(settings, "ops", admin=True)["Authorization"].removeprefix("Bearer ")
    user = new_key(settings, "acme")["Authorization"].removeprefix("Bearer ")
    try:
        yield Service(url, settings, admin, user)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, url: str,
        key: str | None, *argv: str) -> tuple[int, str, str]:
    """`mtl ARGV` in this process, as a user with MTL_URL and MTL_API_KEY set: (status, stdout,
    stderr)."""
    monkeypatch.setenv("MTL_URL", url)
    if key is None:
        monkeypatch.delenv("MTL_API_KEY", raising=False)
    else:
        monkeypatch.setenv("MTL_API_KEY", key)
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def glyph_folder(root: Path, drawings: range) -> Path:
    """A folder of class folders: Omniglot characters as PNGs."""
    for c in CHARACTERS:
        (root / f"ch{c}").mkdir(parents=True)
        for d in drawings:
            (root / f"ch{c}" / f"{d}.png").write_bytes(omniglot_png(c, d))
    return root


def test_readme_walkthrough_with_the_cli(service: Service, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """upload a folder -> create --wait (a progress bar fed by the job) -> predict (a table)."""
    def mtl(*argv: str) -> tuple[int, str, str]:
        return run(capsys, monkeypatch, service.url, service.user_key, *argv)

    folder = glyph_folder(tmp_path / "glyphs", range(5))
    status, out, err = mtl("datasets", "upload", str(folder))
    assert status == 0, err
    dataset_id = out.strip()
    assert "'glyphs': 15 images in 3 classes (ch0: 5, ch40: 5, ch80: 5)" in err

    # As the README does: no --base-model, so the job chooses one and --wait says which.
    status, out, err = mtl("classifiers", "create", "--dataset", dataset_id,
                           "--params", json.dumps(FAST), "--wait")
    assert status == 0, err
    classifier_id = out.strip()
    with service.client() as client:
        clf = client.classifier(classifier_id)
        job = client.job(clf.job_id or "")
    assert (clf.status, clf.name, clf.labels) == ("ready", "glyphs", ["ch0", "ch40", "ch80"])
    total = job.progress.total_steps
    assert job.status == "succeeded" and total > 0
    assert f"{total}/{total}" in err  # the bar followed the job to its last step
    assert "holdout accuracy" in err
    assert clf.base_model_id == "handwriting" and clf.base_model_choice is not None
    assert "base model handwriting: the best of the ready base models on this dataset" in err, err
    status, out, err = mtl("classifiers", "holdout", classifier_id)
    assert status == 0, err
    lines = out.splitlines()  # one held-out drawing a class (FAST's holdout), as a table
    assert lines[0].split() == ["image", "label", "predicted", "probability"] and len(lines) == 4
    assert {line.split()[1] for line in lines[1:]} == {"ch0", "ch40", "ch80"}
    assert "3 holdout images" in err

    # More drawings later: `datasets add` puts them in their classes (the dataset is recorded
    # as changed); a classifier trained now would see 20 images.
    status, out, err = mtl("datasets", "add", dataset_id, str(glyph_folder(tmp_path / "more",
                                                                            range(5, 7))))
    assert status == 0 and out.strip() == dataset_id, err
    assert "added 6 images" in err and "21 images in 3 classes (ch0: 7, ch40: 7, ch80: 7)" in err
    with service.client() as client:
        assert client.dataset(dataset_id).revision == 1

    # Retrain on it: version 2, which predict then answers with; versions side by side.
    status, out, err = mtl("classifiers", "retrain", classifier_id, "--params", json.dumps(FAST),
                           "--wait")
    assert status == 0, err
    second = out.strip()
    assert second != classifier_id and "version 2" in err and "holdout accuracy" in err
    status, out, err = mtl("classifiers", "versions", classifier_id)
    assert status == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["version", "classifier", "status", "holdout", "classes", "created",
                       "predict"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("1", classifier_id, "ready"),
                                                      ("2", second, "ready")]
    assert rows[2][-1] == "answers" and rows[1][-1] != "answers"
    query = tmp_path / "query.png"
    query.write_bytes(omniglot_png(CHARACTERS[0], 18))
    status, out, err = mtl("predict", classifier_id, str(query), "--json")
    assert status == 0 and json.loads(out)["version"] == 2, err
    status, out, err = mtl("predict", classifier_id, str(query), "--json", "--version", "1")
    assert status == 0 and json.loads(out)["version"] == 1, err

    queries = []
    for c in CHARACTERS:  # drawings the classifier never saw
        queries.append(tmp_path / f"query-ch{c}.png")
        queries[-1].write_bytes(omniglot_png(c, 19))
    status, out, err = mtl("predict", classifier_id, *map(str, queries), "--top-k", "2")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["image", "label", "probability", "score"]
    assert len(lines) == 1 + 2 * len(queries)
    for i, (path, c) in enumerate(zip(queries, CHARACTERS, strict=True)):
        first, second = lines[1 + 2 * i].split(), lines[2 + 2 * i].split()
        assert first[:2] == [str(path), f"ch{c}"]  # top-1 is the right character
        assert 1 >= float(first[2]) >= float(second[1]) >= 0
        assert -1 <= float(first[3]) <= 1 and len(second) == 2  # the score once, on the top row

    status, out, _ = mtl("predict", classifier_id, str(queries[0]), "--json", "--top-k", "1")
    assert status == 0
    assert json.loads(out)["results"][0]["predictions"][0]["label"] == "ch0"

    status, out, err = mtl("classifiers", "list")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["classifier", "name", "status"]
    row = next(r.split() for r in rows if r.startswith(classifier_id))
    assert row[1:5] == ["glyphs", "ready", "handwriting", "3"]
    assert clf.metrics is not None and row[5] == f"{100 * clf.metrics.holdout_accuracy:.1f}%"
    status, out, _ = mtl("classifiers", "show", classifier_id)
    assert status == 0 and json.loads(out)["labels"] == ["ch0", "ch40", "ch80"]
    # Export: the zip lands where -o says, readable by everyone (0644), its labels the model's.
    target = tmp_path / "out" / "glyphs.zip"
    target.parent.mkdir()
    status, out, err = mtl("classifiers", "export", classifier_id, "--format", "torchscript",
                           "-o", str(target))
    assert (status, out.strip()) == (0, str(target)), err
    with zipfile.ZipFile(target) as zf:
        assert {"model.pt", "labels.json", "preprocessing.json", "README.txt"} == set(zf.namelist())
        assert json.loads(zf.read("labels.json")) == ["ch0", "ch40", "ch80"]
        assert {(i.external_attr >> 16) & 0o777 for i in zf.infolist()} == {0o644}
    assert mtl("classifiers", "export", classifier_id, "-o", str(tmp_path))[::2] == (
        2, f"error: {tmp_path} is a folder; give the zip's file name\n")
    status, _, err = mtl("classifiers", "delete", classifier_id)
    assert (status, err) == (0, f"classifier {classifier_id} deleted\n")
    assert mtl("classifiers", "show", classifier_id)[::2] == (
        1, f"error: classifier {classifier_id} not found (HTTP 404)\n")
    assert classifier_id not in mtl("classifiers", "list")[1]


def test_python_client(service: Service, tmp_path: Path) -> None:
    """The typed API: a zip upload, training followed by a progress callback, predict on several
    images with one that does not decode, and the service's errors as ApiError."""
    archive = tmp_path / "glyphs.zip"
    archive.write_bytes(omniglot_zip(CHARACTERS, range(4)))
    with service.client() as client:
        ds = client.upload_dataset(archive, name="zipped")
        assert (ds.name, ds.num_images, [c.name for c in ds.classes]) == (
            "zipped", 12, ["ch0", "ch40", "ch80"])
        created = client.create_classifier(ds.id, name="glyphs", base_model_id="handwriting",
                                           params=FAST, idempotency_key="train-1")
        again = client.create_classifier(ds.id, name="glyphs", base_model_id="handwriting",
                                         params=FAST, idempotency_key="train-1")
        assert again == created  # the first answer; no second job
        seen: list[tuple[str, int]] = []
        job = client.wait_for_job(created.job_id, interval=0.1,
                                  progress=lambda j: seen.append((j.status, j.progress.step)))
        assert job.status == "succeeded", job.error
        steps = [step for _, step in seen]
        assert steps == sorted(steps) and steps[-1] == job.progress.total_steps
        assert seen[-1][0] == "succeeded"

        good = tmp_path / "a.png"
        good.write_bytes(omniglot_png(40, 18))
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        answer = client.predict(created.id, [good, bad, good], top_k=2)
        assert [r.filename for r in answer.results] == ["a.png", "notes.png", "a.png"]
        assert answer.results[0].predictions and answer.results[0].predictions[0].label == "ch40"
        assert len(answer.results[0].predictions) == 2
        assert answer.results[1].error and answer.results[1].predictions is None
        assert "handwriting" in {m.id for m in client.base_models()}

        with pytest.raises(ApiError) as err:
            client.predict("no-such-classifier", [good])
        assert (err.value.status, err.value.message) == (404, "classifier no-such-classifier not found")
        with pytest.raises(ApiError) as err:
            client.create_classifier(ds.id, name="x", params={"steps": -1})
        assert err.value.status == 422 and "steps" in err.value.message
        with pytest.raises(ClientError, match="does not exist"):
            client.upload_dataset(tmp_path / "missing")
        with pytest.raises(ClientError, match="no class subfolders"):
            client.upload_dataset(tmp_path)  # holds files only
        with pytest.raises(ClientError, match="is not a file"):
            client.predict(created.id, [tmp_path / "missing.png"])

    with Client(service.url, "mtl_00000000_wrong") as stranger, pytest.raises(ApiError) as err:
        stranger.jobs()
    assert (err.value.status, err.value.message) == (401, "unknown API key")
    with Client(f"http://127.0.0.1:{free_port()}", "k") as nowhere, pytest.raises(ApiError) as err:
        nowhere.jobs()
    assert err.value.status is None and "cannot reach the service" in err.value.message


def load_demo() -> Any:
    spec = importlib.util.spec_from_file_location("mtl_demo", REPO / "scripts" / "demo.py")
    assert spec and spec.loader
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo


def test_readme_pretraining_example_and_jobs(service: Service, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's admin pretraining example is accepted on the README's sample glyphs (it was
    a 422: the defaults need 10 images a class); `mtl jobs list|show|cancel` on that job."""
    def mtl(*argv: str) -> tuple[int, str, str]:
        return run(capsys, monkeypatch, service.url, service.admin_key, *argv)

    demo = load_demo()
    data = demo.build_datasets(data_root(), tmp_path)
    example = demo.PRETRAIN_EXAMPLE
    readme = (REPO / "README.md").read_text()
    assert json.dumps(example["params"]) in readme and f'"{example["algorithm"]}"' in readme

    status, out, err = mtl("datasets", "upload", str(data["glyphs"]))
    assert status == 0, err
    with service.client(service.admin_key) as client:
        created = client.create_pretraining_job(out.strip(), **example)

    status, out, err = mtl("jobs", "list", "--limit", "5")
    assert status == 0, err
    assert out.splitlines()[0].split() == ["job", "kind", "status", "phase", "step", "created"]
    assert out.splitlines()[1].split()[:2] == [created.job_id, "pretraining"]  # newest first
    status, out, err = mtl("jobs", "show", created.job_id)
    assert status == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["kind"], shown["base_model_id"]) == (
        created.job_id, "pretraining", created.base_model_id)

    status, out, err = mtl("jobs", "cancel", created.job_id)
    assert status == 0, err
    assert out.startswith(f"job {created.job_id}: ")
    with service.client(service.admin_key) as client:
        job = client.wait_for_job(created.job_id, interval=0.2, timeout=120)
    assert job.status == "cancelled"
    status, out, err = mtl("jobs", "list", "--status", "cancelled")
    assert created.job_id in out
    status, out, err = mtl("jobs", "cancel", created.job_id)
    assert (status, out) == (1, "")
    assert err == f"error: job {created.job_id} already cancelled (HTTP 409)\n"
    status, _, err = mtl("jobs", "show", "nope")
    assert (status, err) == (1, "error: job nope not found (HTTP 404)\n")


def test_keys_list_and_revoke(service: Service, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    def mtl(key: str, *argv: str) -> tuple[int, str, str]:
        return run(capsys, monkeypatch, service.url, key, *argv)

    doomed = new_key(service.settings, "temp")["Authorization"].removeprefix("Bearer ")
    prefix = doomed.split("_")[1]
    status, out, err = mtl(service.admin_key, "keys", "list")
    assert status == 0, err
    rows = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[1:]}
    assert rows[prefix] == ["temp", "user"]
    assert rows[service.admin_key.split("_")[1]] == ["ops", "admin"]

    assert mtl(doomed, "jobs", "list")[0] == 0
    status, out, err = mtl(service.admin_key, "keys", "revoke", prefix)
    assert (status, out) == (0, f"revoked the key with prefix {prefix}\n"), err
    # Revoked through the API: refused at once, not after the API's key cache expires.
    status, out, err = mtl(doomed, "jobs", "list")
    assert (status, out) == (1, "") and err.startswith(f"error: API key {prefix} was revoked at "), err
    assert err.endswith("ask an admin for a new one (HTTP 401)\n"), err
    assert prefix not in mtl(service.admin_key, "keys", "list")[1]

    assert mtl(service.admin_key, "keys", "revoke", prefix)[1:] == (
        "", f"error: no API key in use with prefix {prefix} (HTTP 404)\n")
    assert mtl(service.user_key, "keys", "list")[1:] == (
        "", "error: this route needs an admin key (HTTP 403)\n")


def test_cli_mistakes_are_one_line(service: Service, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistake on the command line exits 2, the service's refusal 1: one line each."""
    def mtl(key: str | None, *argv: str, url: str = service.url) -> tuple[int, str, str]:
        return run(capsys, monkeypatch, url, key, *argv)

    status, _, err = mtl(None, "jobs", "list")
    assert (status, err.splitlines()[0]) == (2, "error: no API key: set MTL_API_KEY (an admin "
                                                "creates one with `mtl keys create --tenant NAME`)")
    assert mtl(service.user_key, "datasets", "upload", str(tmp_path / "nope"))[::2] == (
        2, f"error: {tmp_path / 'nope'} does not exist\n")
    assert mtl(service.user_key, "predict", "abc", str(tmp_path / "x.png"))[::2] == (
        2, f"error: {tmp_path / 'x.png'} is not a file\n")
    status, _, err = mtl(service.user_key, "classifiers", "create", "--dataset", "d",
                         "--params", "{steps: 3}")
    assert status == 2 and "--params: not JSON" in err
    assert mtl(service.user_key, "classifiers", "create", "--dataset", "nope")[::2] == (
        1, "error: dataset nope not found (HTTP 404)\n")
    status, _, err = mtl("mtl_00000000_wrong", "jobs", "list")
    assert (status, err) == (1, "error: unknown API key (HTTP 401)\n")
    status, _, err = mtl(service.user_key, "jobs", "list", url=f"http://127.0.0.1:{free_port()}")
    assert status == 1 and err.startswith("error: cannot reach the service at http://127.0.0.1:")
    assert len(err.splitlines()) == 1
    # The refusals name what would be accepted: the parameters, the base models.
    dataset_id = mtl(service.user_key, "datasets", "upload",
                     str(glyph_folder(tmp_path / "glyphs", range(2))))[1].strip()
    status, _, err = mtl(service.user_key, "classifiers", "create", "--dataset", dataset_id,
                         "--params", '{"stepz": 3}')
    assert status == 1 and "unknown parameter 'stepz'; the parameters are steps, learning_rate" in err
    status, _, err = mtl(service.user_key, "classifiers", "create", "--dataset", dataset_id,
                         "--base-model", "handwritting")
    assert status == 1 and err.startswith("error: base model handwritting not found; the ready "
                                          "ones: ") and "handwriting" in err.split(":")[2], err


def test_datasets_base_models_flags_and_json(service: Service, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets list|show|delete and base-models list; --url and --api-key instead of the
    environment; --json on what prints; lists newest first."""
    def mtl(*argv: str) -> tuple[int, str, str]:
        return run(capsys, monkeypatch, "http://127.0.0.1:1", None, *argv,
                   "--url", service.url, "--api-key", service.user_key)

    ids = []
    for name in ("older", "newer"):
        status, out, err = mtl("datasets", "upload", str(glyph_folder(tmp_path / name, range(2))))
        assert status == 0, err
        ids.append(out.strip())
    status, out, err = mtl("datasets", "list")
    assert status == 0, err
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed.index(ids[1]) < listed.index(ids[0])  # newest first
    status, out, _ = mtl("datasets", "list", "--json")
    assert status == 0 and {d["id"] for d in json.loads(out)} >= set(ids)
    status, out, _ = mtl("datasets", "show", ids[0])
    assert status == 0 and json.loads(out)["num_images"] == 6
    assert mtl("datasets", "delete", ids[0])[::2] == (0, f"dataset {ids[0]} deleted\n")
    assert mtl("datasets", "show", ids[0])[::2] == (1, f"error: dataset {ids[0]} not found (HTTP 404)\n")
    status, out, err = mtl("base-models", "list")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["base", "model", "name"]
    assert any(r.split()[0] == "handwriting" for r in rows)
    status, out, _ = mtl("base-models", "list", "--json")
    assert "handwriting" in {m["id"] for m in json.loads(out)}


def test_a_closed_pipe_is_a_quiet_exit(service: Service) -> None:
    """`mtl ... | head -1`: no BrokenPipeError traceback."""
    import os
    import sys

    env = {**os.environ, "MTL_URL": service.url, "MTL_API_KEY": service.admin_key}
    reader = subprocess.Popen([sys.executable, "-m", "app.cli", "base-models", "list", "--json"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # the reader of the pipe has gone before anything was written
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def run_demo(data: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`make demo`'s script as a new user runs it, on the sample data in `data`."""
    import os
    import sys

    env = {**os.environ, "MTL_DATA_ROOT": str(data), "MTL_TORCH_THREADS": "1"}
    return subprocess.run([sys.executable, "scripts/demo.py"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_demo_script_refuses_a_missing_data_root(tmp_path: Path) -> None:
    done = run_demo(tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"error: no sample data in {tmp_path}: set MTL_DATA_ROOT to the folder "
                           "holding omniglot/ and miniimagenet-lite/\n")


@pytest.mark.slow  # `make demo` itself: a real mtl serve, two classifiers and a pretraining job
def test_make_demo_runs_end_to_end() -> None:
    done = run_demo(data_root(), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert out.rstrip().endswith("demo done: every step of the README's walk-through worked")
    # Both classifiers predicted their held-out images, and the pretraining example ran.
    assert "golden_retriever" in out and "pretrain" in out.lower()
