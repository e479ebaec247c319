"""The service a speed benchmark measures: `mtl serve` (API + one worker, embedded) on loopback
with a fresh data directory and an API key (benchmarks.harness.ServeProcess), and what the
scenarios do through it: upload a dataset, train a classifier, time its raw in-process forward."""

from __future__ import annotations

import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.harness import REPO, ServeProcess, ServiceNotReady

MTL = [sys.executable, "-m", "app.cli"]


# ----------------------------------------------------------------------------- the service


class Service:
    """`mtl serve` (API + one worker) on loopback with a fresh data directory."""

    def __init__(self, data_dir: Path, builtin_dir: Path, env: dict[str, str] | None = None,
                 *, server_repo: Path = REPO) -> None:
        env = {**os.environ, "MTL_DATA_DIR": str(data_dir),
               "MTL_BUILTIN_MODELS_DIR": str(builtin_dir), **(env or {})}
        self.env = env
        # Run from `server_repo`: another checkout (e.g. `git archive` of an older commit) serves
        # with its own code, for a before/after comparison in one window.
        self.serve = ServeProcess(env, data_dir.parent / "serve.log", cwd=server_repo)
        self.proc, self.url, self.port = self.serve.proc, self.serve.url, self.serve.port
        try:
            self.serve.wait_ready(timeout=120)
        except ServiceNotReady:
            self.stop()
            raise
        key = subprocess.run([*MTL, "keys", "create", "--tenant", "bench"], cwd=REPO, env=self.env,
                             capture_output=True, text=True, check=True).stdout.strip()
        self.headers = {"Authorization": f"Bearer {key}"}

    def rss_mib(self) -> float:
        """Resident memory of the API process (uvicorn runs in the `mtl serve` process)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.serve.stop(timeout=40)


@contextmanager
def service(builtin_dir: Path, threads: int | None) -> Iterator[tuple[Service, Path]]:
    env = {} if threads is None else {"OMP_NUM_THREADS": str(threads),
                                      "MTL_TORCH_THREADS": str(threads)}
    tmp = Path(tempfile.mkdtemp(prefix="mtl-speed-"))
    data_dir = tmp / "var"
    data_dir.mkdir()
    svc = Service(data_dir, builtin_dir, env)
    try:
        yield svc, data_dir
    finally:
        svc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def upload(svc: Service, name: str, members: dict[str, bytes]) -> str:
    r = httpx.post(svc.url + "/v1/datasets", headers=svc.headers, data={"name": name},
                   files={"archive": ("d.zip", zip_of(members), "application/zip")}, timeout=120)
    r.raise_for_status()
    return str(r.json()["id"])


def train(svc: Service, dataset_id: str, base: str | None, *, poll_s: float = 0.1,
          timeout_s: float = 600) -> tuple[str, float, dict[str, Any]]:
    """Create a classifier (`base` None: the job chooses the base model); (its id, seconds from
    the POST to `succeeded`, the final job)."""
    body = {"name": "bench", "dataset_id": dataset_id, **({"base_model_id": base} if base else {})}
    with httpx.Client(base_url=svc.url, headers=svc.headers, timeout=30) as client:
        t0 = time.perf_counter()
        r = client.post("/v1/classifiers", json=body)
        r.raise_for_status()
        created = r.json()
        deadline = t0 + timeout_s
        while time.perf_counter() < deadline:
            job = client.get(f"/v1/jobs/{created['job_id']}").json()
            if job["status"] == "succeeded":
                return created["id"], time.perf_counter() - t0, job
            if job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"training job {job['status']}: {job.get('error')}")
            time.sleep(poll_s)
    raise RuntimeError(f"training did not finish in {timeout_s} s")


def _jpeg_84(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").resize((84, 84)).save(buf, format="JPEG", quality=90)
        return buf.getvalue()


def natural_classifier(svc: Service, per_class: int) -> tuple[str, list[bytes]]:
    """Train a classifier on 5 miniImageNet-lite val classes; (its id, other images of them)."""
    from models.data import data_root

    folders = sorted((data_root() / "miniimagenet-lite" / "val").iterdir())[:5]
    members, queries = {}, []
    for folder in folders:
        files = sorted(folder.glob("*.jpg"))
        for f in files[:per_class]:
            members[f"val/{folder.name}/{f.name}"] = _jpeg_84(f)
        queries += [_jpeg_84(f) for f in files[per_class : per_class + 20]]
    dataset_id = upload(svc, "natural5", members)
    clf_id, seconds, _ = train(svc, dataset_id, "natural")
    print(f"trained classifier {clf_id} on 5 x {per_class} images in {seconds:.1f} s")
    return clf_id, queries


def raw_forward_ms(directory: Path, image: bytes, repeats: int, threads: int | None,
                   batch: int = 1) -> float:
    """Median ms of the classifier's in-process forward (predict_proba) at `batch` copies of one
    image, with the server's number of torch threads."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)

    from models.checkpoint import load_classifier
    from models.data import to_float
    from models.loaders import decode_image

    clf, card = load_classifier(directory)
    x = to_float(torch.from_numpy(decode_image(image, channels=card["channels"],
                                               image_size=card["image_size"])[None]))
    x = x.expand(batch, -1, -1, -1).contiguous()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 10):
            t0 = time.perf_counter()
            clf.predict_proba(x)
            if i >= 10:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def svc_setting(name: str) -> Any:
    from app.infra.settings import Settings

    return getattr(Settings(), name)
