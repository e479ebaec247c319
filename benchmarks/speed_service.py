"""Service speed, measured against a real `mtl serve` (embedded: SQLite + filesystem broker + one
worker) on 127.0.0.1 with a temporary MTL_DATA_DIR, started and stopped by this script.

- `train`: time to a custom classifier, from `POST /v1/classifiers` to the job's `succeeded`
  (5 Omniglot evaluation characters x 5 drawings, handwriting base model, defaults, CPU), the job
  polled every 100 ms. Goal: p50 at most 10 s.
- `predict`: one 84x84 image per `POST /v1/classifiers/{id}/predict` (natural base model, a
  classifier trained on 5 miniImageNet-lite val classes) at concurrency 1, 8 and 32, against the
  same classifier's raw in-process forward at batch 1. Goals: p50 at concurrency 1 at most
  1.5x the raw forward + 5 ms; throughput at concurrency 32 at least 5x that at concurrency 1.
- `many`: `--classifiers` (1,000; 10,000 in docs/speed.md) registered (rows written with the
  app's own tables and session, the checkpoint folders hard links of one trained classifier's
  files); predict on ones not in the cache and on one in it: cold and warm p50/p99, the cache's
  bounds (MTL_PREDICT_CACHE_SIZE, MTL_PREDICT_CACHE_BYTES), and the API process's resident memory
  before and after.

- `http` (issue 13): where a request's time goes, `/healthz` (HTTP only), an authenticated
  `GET /v1/classifiers/{id}` (+ the key and one row) and predict (+ an image and a forward pass)
  at concurrency 1 and 32, sent by `RawLoad` (a wrk-style client on raw asyncio streams, cheap
  enough not to be the bottleneck); with `--compare DIR`, another checkout served alternately on
  the same data directory (before/after in one window). Goals: the GET at least 1,000 req/s;
  predict at 32 at least 3x predict at 1; predict's p50 at 1 within 1.5x raw forward + 5 ms.

    python -m benchmarks.speed_service train|predict|many|http|all [--builtin-dir app/builtin_models]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
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

from benchmarks.harness import ServeProcess, ServiceNotReady
from benchmarks.table1 import git_commit

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
MTL = [sys.executable, "-m", "app.cli"]



# ----------------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    import torch

    load1, load5, load15 = os.getloadavg()
    busy = subprocess.run(["ps", "-eo", "pcpu,args", "--sort=-pcpu"], capture_output=True,
                          text=True).stdout.splitlines()[1:6]
    heavy = [line.strip()[:160] for line in busy
             if float(line.split()[0]) >= 20.0 and "benchmarks.speed_service" not in line]
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "other_heavy_processes": heavy,
        "shared": bool(heavy) or load1 > 0.5,
    }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def write_report(name: str, report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"speed-{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


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


def _seconds_between(a: str, b: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


# ----------------------------------------------------------------------------- 2. train


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    from models.data import data_root

    with np.load(data_root() / "omniglot" / "images_evaluation.npz") as npz:
        images = npz["images"]  # bool (characters, 20, 105, 105), True = paper
    rng = np.random.default_rng(0)
    characters = rng.permutation(len(images))[: 5 * (args.runs + 1)].reshape(args.runs + 1, 5)
    rows = []
    with service(args.builtin_dir, args.torch_threads) as (svc, _):
        datasets = [upload(svc, f"glyphs{i}", {f"chars/ch{c}/{d}.png": png(images[c, d].astype(
            np.uint8) * 255) for c in chars for d in range(5)}) for i, chars in enumerate(characters)]
        for i, dataset_id in enumerate(datasets):
            _, seconds, job = train(svc, dataset_id, None if args.base_model == "choose"
                                    else args.base_model)
            rows.append({
                "run": i, "warm_up": i == 0, "seconds": round(seconds, 3),
                "queued_s": round(_seconds_between(job["created_at"], job["started_at"]), 3),
                "running_s": round(_seconds_between(job["started_at"], job["finished_at"]), 3),
                "steps": job["progress"]["total_steps"], "base_model": job["base_model_id"],
            })
            print(f"run {i}{' (warm-up)' if i == 0 else ''}: {seconds:.2f} s "
                  f"(queued {rows[-1]['queued_s']:.2f} s, running {rows[-1]['running_s']:.2f} s)")
    timed = [r["seconds"] for r in rows if not r["warm_up"]]
    summary = {"p50_s": round(percentile(timed, 50), 2), "p95_s": round(percentile(timed, 95), 2),
               "min_s": round(min(timed), 2), "max_s": round(max(timed), 2),
               "median_queued_s": round(statistics.median(r["queued_s"] for r in rows[1:]), 2),
               "median_running_s": round(statistics.median(r["running_s"] for r in rows[1:]), 2),
               "first_run_s": rows[0]["seconds"]}
    print(f"\n{'runs':>4} {'p50 s':>7} {'p95 s':>7} {'queued':>7} {'running':>8} {'first':>6}")
    print(f"{len(timed):>4} {summary['p50_s']:>7} {summary['p95_s']:>7} "
          f"{summary['median_queued_s']:>7} {summary['median_running_s']:>8} "
          f"{summary['first_run_s']:>6}")
    goal = {"p50_at_most_s": 10.0, "met": summary["p50_s"] <= 10.0}
    print(f"goal p50 <= 10 s: {'met' if goal['met'] else 'missed'}")
    return {"benchmark": "time to a custom classifier (POST /v1/classifiers to succeeded)",
            "setup": "embedded mtl serve (SQLite, filesystem broker, one worker), CPU; 5 Omniglot "
                     "evaluation characters x 5 drawings per run (a different dataset each run, "
                     f"uploaded before timing), base model: {args.base_model} ('choose': the request "
                     "names none and the job scores each ready one first), default params, job polled "
                     "every 100 ms; run 0 is a warm-up (the worker imports torch then) and is not "
                     "in the percentiles",
            "summary": summary, "goal": goal, "runs": rows}


# ----------------------------------------------------------------------------- 3. predict


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


async def _load(url: str, headers: dict[str, str], images: list[bytes], concurrency: int,
                requests: int, *, get: bool = False) -> tuple[list[float], float]:
    """`requests` predicts (or GETs of `url`), `concurrency` at a time; (latencies in s, wall
    seconds)."""
    latencies: list[float] = []
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            r = await (client.get(url) if get else client.post(
                url, files={"files": ("q.jpg", images[i % len(images)], "image/jpeg")},
                data={"top_k": "1"}))
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()

        async def lane() -> None:
            for i in todo:
                await one(i)

        for i in range(min(requests, 2 * concurrency)):  # warm connections and the cache
            await one(i)
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, wall


def bench_predict(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    with service(args.builtin_dir, args.torch_threads) as (svc, data_dir):
        clf_id, images = natural_classifier(svc, args.train_per_class)
        raw = raw_forward_ms(data_dir / "classifiers" / clf_id, images[0], repeats=200,
                             threads=args.torch_threads)
        # Does a batch cost less per image than batch 1? That is all batching can save.
        per_image = {b: round(raw_forward_ms(data_dir / "classifiers" / clf_id, images[0],
                                             repeats=20, threads=args.torch_threads, batch=b) / b,
                              2) for b in (1, 8, 32)}
        url = f"{svc.url}/v1/classifiers/{clf_id}/predict"
        for concurrency in args.concurrency:
            latencies, wall = asyncio.run(_load(url, svc.headers, images, concurrency,
                                                args.requests))
            ms = [1000 * v for v in latencies]
            rows.append({"concurrency": concurrency, "requests": len(ms),
                         "p50_ms": round(percentile(ms, 50), 2),
                         "p95_ms": round(percentile(ms, 95), 2),
                         "p99_ms": round(percentile(ms, 99), 2),
                         "throughput_rps": round(len(ms) / wall, 1)})
        # The same route stack without the image and the forward pass: what HTTP, the API key
        # lookup and the classifier row cost alone, as a ceiling for predict's throughput.
        ceiling = {}
        for concurrency in (1, max(args.concurrency)):
            latencies, wall = asyncio.run(_load(f"{svc.url}/v1/classifiers/{clf_id}",
                                                svc.headers, images, concurrency, args.requests,
                                                get=True))
            ceiling[concurrency] = {"p50_ms": round(1000 * percentile(latencies, 50), 2),
                                    "throughput_rps": round(len(latencies) / wall, 1)}
    print(f"raw in-process forward, batch 1: {raw:.2f} ms (median of 200); ms per image at "
          f"batch 1/8/32: {' / '.join(str(v) for v in per_image.values())}")
    print(f"{'conc':>4} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'req/s':>7}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['requests']:>8} {r['p50_ms']:>8} {r['p95_ms']:>8} "
              f"{r['p99_ms']:>8} {r['throughput_rps']:>7}")
    for c, v in ceiling.items():
        print(f"GET /v1/classifiers/{{id}} (no image, no forward) at concurrency {c}: "
              f"p50 {v['p50_ms']} ms, {v['throughput_rps']} req/s")
    by = {r["concurrency"]: r for r in rows}
    goals: dict[str, Any] = {}
    if 1 in by:
        bound = 1.5 * raw + 5
        goals["p50_c1"] = {"limit_ms": round(bound, 2), "measured_ms": by[1]["p50_ms"],
                           "met": by[1]["p50_ms"] <= bound}
    if 1 in by and 32 in by:
        ratio = by[32]["throughput_rps"] / by[1]["throughput_rps"]
        goals["throughput_c32_over_c1"] = {"at_least": 5.0, "measured": round(ratio, 2),
                                           "met": ratio >= 5.0}
    for name, g in goals.items():
        print(f"goal {name}: {'met' if g['met'] else 'missed'} ({g})")
    return {"benchmark": "predict over HTTP, one 84x84 image per request",
            "setup": f"embedded mtl serve, CPU; natural base model; classifier trained through the "
                     f"API on 5 miniImageNet-lite val classes x {args.train_per_class} images; "
                     f"requests are 84x84 JPEGs of 20 other images of each class, top_k=1, "
                     f"httpx.AsyncClient in this process (same machine), {2} warm-up requests per "
                     f"connection first; raw forward = models.checkpoint.load_classifier + "
                     f"predict_proba on one decoded image under torch.inference_mode",
            "raw_forward_batch1_ms": round(raw, 2),
            "raw_forward_ms_per_image_by_batch": {str(b): v for b, v in per_image.items()},
            "torch_threads_server_and_raw": args.torch_threads or "torch default",
            "levels": rows, "goals": goals,
            "reference_authenticated_get": {str(c): v for c, v in ceiling.items()},
            "settings": {"MTL_PREDICT_BATCH_WAIT_MS": svc_setting("predict_batch_wait_ms"),
                         "MTL_PREDICT_MAX_BATCH": svc_setting("predict_max_batch")}}


def svc_setting(name: str) -> Any:
    from app.infra.settings import Settings

    return getattr(Settings(), name)


# ----------------------------------------------------------------------------- http


class RawLoad:
    """A small wrk-style load generator: `concurrency` keep-alive HTTP/1.1 connections, each
    sending one prepared request after another on raw asyncio streams. Much cheaper per request
    than httpx, so on a 2-core machine the server, not the client, is what is measured."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request

    async def _lane(self, todo: Iterator[int], latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            for _ in todo:
                t0 = time.perf_counter()
                writer.write(self.request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:200]!r}")
        finally:
            writer.close()

    async def run(self, concurrency: int, requests: int) -> tuple[list[float], float]:
        """(latencies in s, wall seconds) of `requests` after `2 x concurrency` warm-up ones."""
        warm: list[float] = []
        await asyncio.gather(*(self._lane(iter(range(2)), warm) for _ in range(concurrency)))
        latencies: list[float] = []
        todo = iter(range(requests))
        t0 = time.perf_counter()
        await asyncio.gather(*(self._lane(todo, latencies) for _ in range(concurrency)))
        return latencies, time.perf_counter() - t0


def get_request(port: int, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def predict_request(port: int, path: str, headers: dict[str, str], image: bytes) -> bytes:
    boundary = "mtlbenchboundary7d3f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n1\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + image + (
            f"\r\n--{boundary}--\r\n").encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Type: multipart/form-data; boundary={boundary}",
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop  # the load generator's own loop: cheaper where installed
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure_http(svc: Service, clf_id: str, image: bytes, levels: list[int],
                 get_requests: int, predict_requests: int) -> list[dict[str, Any]]:
    """Where a request's time goes: /healthz (HTTP only), an authenticated image-free GET (+ the
    API key and a database row), predict (+ multipart, decoding, the forward pass)."""
    routes = [("healthz", get_request(svc.port, "/healthz", {}), get_requests),
              ("get_classifier", get_request(svc.port, f"/v1/classifiers/{clf_id}", svc.headers),
               get_requests),
              ("predict", predict_request(svc.port, f"/v1/classifiers/{clf_id}/predict",
                                          svc.headers, image), predict_requests)]
    rows = []
    for route, request, n in routes:
        # Unmeasured warm-up on several connections, so that every API process has imported
        # torch and loaded the classifier (one process's first predict takes about a second).
        _run_loop(RawLoad(svc.port, request).run(8, 64))
        for c in levels:
            latencies, wall = _run_loop(RawLoad(svc.port, request).run(c, n))
            ms = [1000 * v for v in latencies]
            rows.append({"route": route, "concurrency": c, "requests": len(ms),
                         "p50_ms": round(percentile(ms, 50), 2),
                         "p95_ms": round(percentile(ms, 95), 2),
                         "throughput_rps": round(len(ms) / wall, 1),
                         "load_average_1": round(os.getloadavg()[0], 2)})
            r = rows[-1]
            print(f"  {route:>15} c={c:<3} p50 {r['p50_ms']:>8} ms  p95 {r['p95_ms']:>8} ms  "
                  f"{r['throughput_rps']:>8} req/s  (load {r['load_average_1']})")
    return rows


def bench_http(args: argparse.Namespace) -> dict[str, Any]:
    """Before/after in one window: the current checkout and (with --compare DIR) another one,
    alternately, on one data directory with one trained classifier."""
    # (name, checkout, plain uvicorn, API processes)
    variants: list[tuple[str, Path, bool, int]] = [
        ("current" if n == 1 else f"current-{n}proc", REPO, False, n) for n in args.api_processes]
    if args.compare is not None:
        variants.insert(0, ("compare", args.compare.resolve(), args.compare_plain_uvicorn, 1))
    levels = args.concurrency if args.concurrency != [1, 8, 32] else [1, 32]
    tmp = Path(tempfile.mkdtemp(prefix="mtl-speed-http-"))
    data_dir = tmp / "var"
    data_dir.mkdir()
    env = {} if args.torch_threads is None else {"OMP_NUM_THREADS": str(args.torch_threads),
                                                 "MTL_TORCH_THREADS": str(args.torch_threads)}
    try:
        svc = Service(data_dir, args.builtin_dir, env)
        try:
            clf_id, images = natural_classifier(svc, args.train_per_class)
        finally:
            svc.stop()
        raw = raw_forward_ms(data_dir / "classifiers" / clf_id, images[0], repeats=200,
                             threads=args.torch_threads)
        print(f"raw in-process forward, batch 1: {raw:.2f} ms")
        results: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            for name, repo, plain, processes in variants:
                with service_on(data_dir, args.builtin_dir,
                                {**env, "MTL_API_PROCESSES": str(processes)}, repo, plain) as svc:
                    print(f"round {round_}, {name} ({repo}{', plain uvicorn' if plain else ''}, "
                          f"{processes} API process{'es' if processes > 1 else ''}):")
                    for row in measure_http(svc, clf_id, images[0], levels, args.get_requests,
                                            args.requests):
                        results.append({"round": round_, "variant": name, **row})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {}
    for name, _, _, _ in variants:
        for route in ("healthz", "get_classifier", "predict"):
            for c in levels:
                mine = [r for r in results if r["variant"] == name and r["route"] == route
                        and r["concurrency"] == c]
                summary[f"{name}/{route}/c{c}"] = {
                    "p50_ms": round(statistics.median(r["p50_ms"] for r in mine), 2),
                    "throughput_rps": round(statistics.median(r["throughput_rps"] for r in mine), 1),
                    "throughput_rps_each_round": [r["throughput_rps"] for r in mine]}
    goals: dict[str, Any] = {}
    hi, lo = max(levels), min(levels)
    for name, _, _, _ in variants:
        if not name.startswith("current"):
            continue
        suffix = "" if name == "current" else f"/{name}"
        get_peak = max(summary[f"{name}/get_classifier/c{c}"]["throughput_rps"] for c in levels)
        goals[f"authenticated_get_rps{suffix}"] = {"at_least": 1000, "measured": get_peak,
                                                   "met": get_peak >= 1000}
        if lo == 1 and hi == 32:
            ratio = (summary[f"{name}/predict/c32"]["throughput_rps"]
                     / summary[f"{name}/predict/c1"]["throughput_rps"])
            goals[f"predict_throughput_c32_over_c1{suffix}"] = {
                "at_least": 3.0, "measured": round(ratio, 2), "met": ratio >= 3.0}
            p50 = summary[f"{name}/predict/c1"]["p50_ms"]
            goals[f"predict_p50_c1{suffix}"] = {"limit_ms": round(1.5 * raw + 5, 2),
                                                "measured_ms": p50, "met": p50 <= 1.5 * raw + 5}
    print(f"\n{'variant/route/concurrency':>36} {'p50 ms':>8} {'req/s (median of rounds)':>26}")
    for k, v in summary.items():
        print(f"{k:>36} {v['p50_ms']:>8} {v['throughput_rps']:>26}")
    for name, g in goals.items():
        print(f"goal {name}: {'met' if g['met'] else 'missed'} ({g})")
    return {"benchmark": "the HTTP stack: /healthz, an authenticated GET, predict",
            "setup": "embedded mtl serve on one data directory with one classifier (natural base "
                     f"model, 5 miniImageNet-lite val classes x {args.train_per_class}); the load "
                     "generator is RawLoad in this process (keep-alive HTTP/1.1 on raw asyncio "
                     "streams, uvloop when installed), on the same machine; each variant's server "
                     f"started afresh each round, {args.rounds} rounds, variants alternately; "
                     "predict sends one 84x84 JPEG, top_k=1",
            "variants": {name: {"repo": str(repo), "plain_uvicorn": plain,
                                "api_processes": processes}
                         for name, repo, plain, processes in variants},
            "raw_forward_batch1_ms": round(raw, 2), "summary": summary, "goals": goals,
            "results": results}


@contextmanager
def service_on(data_dir: Path, builtin_dir: Path, env: dict[str, str], repo: Path,
               plain_uvicorn: bool) -> Iterator[Service]:
    env = dict(env)
    shim_root = Path(tempfile.mkdtemp(prefix="mtl-shim-"))
    if plain_uvicorn:
        for name in ("httptools", "uvloop"):
            (shim_root / name).mkdir()
            (shim_root / name / "__init__.py").write_text(f"raise ImportError('{name} hidden')\n")
        env["PYTHONPATH"] = str(shim_root)
    svc = Service(data_dir, builtin_dir, env, server_repo=repo)
    try:
        yield svc
    finally:
        svc.stop()
        shutil.rmtree(shim_root, ignore_errors=True)


# ----------------------------------------------------------------------------- 4. many


def register_copies(data_dir: Path, source_id: str, count: int) -> list[str]:
    """`count` more ready classifiers: rows copied from `source_id`, checkpoint files hard-linked."""
    from sqlalchemy import select

    from app.infra.db import session_scope
    from app.infra.settings import Settings
    from app.infra.tables import ClassifierRecord, new_id

    settings = Settings(data_dir=data_dir)
    ids = []
    with session_scope(settings.resolved_database_url) as session:
        src = session.scalars(select(ClassifierRecord).where(ClassifierRecord.id == source_id)).one()
        for i in range(count):
            copy_id = new_id()
            clf = ClassifierRecord(id=copy_id, family_id=copy_id, tenant=src.tenant,
                             name=f"copy{i}", dataset_id=src.dataset_id,
                             base_model_id=src.base_model_id, job_id=src.job_id, status="ready",
                             labels=list(src.labels), params=dict(src.params), metrics=src.metrics)
            session.add(clf)
            session.flush()
            folder = settings.classifiers_dir / clf.id
            folder.mkdir()
            for f in (settings.classifiers_dir / source_id).iterdir():
                os.link(f, folder / f.name)
            ids.append(clf.id)
    return ids


def cache_metrics(client: httpx.Client) -> dict[str, float] | None:
    """The API's predict-cache series from /metrics (None unless MTL_METRICS_ENABLED=true)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    if r.status_code != 200:
        return None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name.startswith("mtl_predict_cache_") and not sample.name.endswith("_created"):
                key = sample.name + "".join(f"_{v}" for v in sample.labels.values())
                out[key] = out.get(key, 0.0) + sample.value
    return out


def bench_many(args: argparse.Namespace) -> dict[str, Any]:
    with service(args.builtin_dir, args.torch_threads) as (svc, data_dir):
        rss_start = svc.rss_mib()
        clf_id, images = natural_classifier(svc, args.train_per_class)
        started = time.perf_counter()
        ids = [clf_id, *register_copies(data_dir, clf_id, args.classifiers - 1)]
        register_s = time.perf_counter() - started
        folder_bytes = sum(f.stat().st_size for f in (data_dir / "classifiers" / clf_id).iterdir())
        with httpx.Client(base_url=svc.url, headers=svc.headers, timeout=60) as client:

            def predict(cid: str, i: int) -> float:
                t0 = time.perf_counter()
                r = client.post(f"/v1/classifiers/{cid}/predict", data={"top_k": "1"},
                                files={"files": ("q.jpg", images[i % len(images)], "image/jpeg")})
                r.raise_for_status()
                return 1000 * (time.perf_counter() - t0)

            listed, cursor = 0, None
            started = time.perf_counter()
            while True:  # every page of the list
                page = client.get("/v1/classifiers", params={"limit": 200, **({"cursor": cursor} if cursor else {})})
                page.raise_for_status()
                listed += len(page.json()["data"])
                cursor = page.json().get("next_cursor")
                if not cursor:
                    break
            list_s = time.perf_counter() - started
            for i in range(10):  # the registered one is warm, and so are the code paths
                predict(clf_id, i)
            rss_before = svc.rss_mib()
            warm = [predict(clf_id, i) for i in range(args.warm)]
            rng = np.random.default_rng(0)
            never = rng.permutation(np.arange(1, len(ids)))
            cold = [predict(ids[int(j)], i) for i, j in enumerate(never[: args.cold])]
            rss_after = svc.rss_mib()
            # More classifiers never requested: each load evicts the least recently used, so the
            # bound holds and memory stays flat.
            for i, j in enumerate(never[args.cold : args.cold + args.more]):
                predict(ids[int(j)], i)
            rss_after_more = svc.rss_mib()
            cache = cache_metrics(client)
    cache_size, cache_bytes = svc_setting("predict_cache_size"), svc_setting("predict_cache_bytes")
    summary = {"classifiers_registered": listed, "register_s": round(register_s, 1),
               "list_all_pages_s": round(list_s, 2), "cold_requests": len(cold),
               "cold_p50_ms": round(percentile(cold, 50), 2),
               "cold_p95_ms": round(percentile(cold, 95), 2),
               "cold_p99_ms": round(percentile(cold, 99), 2), "warm_requests": len(warm),
               "warm_p50_ms": round(percentile(warm, 50), 2),
               "warm_p99_ms": round(percentile(warm, 99), 2),
               "cache_bound_classifiers": cache_size, "cache_bound_bytes": cache_bytes,
               "checkpoint_bytes_per_classifier": folder_bytes,
               "rss_mib_at_start": rss_start, "rss_mib_before": rss_before, "rss_mib_after_cold": rss_after,
               f"rss_mib_after_{args.more}_more_cold": rss_after_more, "cache_metrics": cache}
    print(f"{'classifiers':>11} {'cold p50/p99 ms':>16} {'warm p50/p99 ms':>16} "
          f"{'cache':>5} {'RSS MiB before/after/+more':>27}")
    cold_ms = f"{summary['cold_p50_ms']} / {summary['cold_p99_ms']}"
    warm_ms = f"{summary['warm_p50_ms']} / {summary['warm_p99_ms']}"
    print(f"{listed:>11} {cold_ms:>16} {warm_ms:>16} {cache_size:>5} "
          f"{f'{rss_before} / {rss_after} / {rss_after_more}':>27}")
    return {"benchmark": f"predict on a classifier not in the cache, {args.classifiers:,} registered",
            "setup": f"embedded mtl serve, CPU; one classifier trained through the API (natural "
                     f"base model, 5 miniImageNet-lite val classes x {args.train_per_class}); "
                     f"{args.classifiers - 1} more rows written with app.infra.db/app.infra.tables, their "
                     f"checkpoint folders hard links of its files; each cold request is one 84x84 "
                     f"JPEG to a classifier never requested before (sequential); warm = the "
                     f"trained one, in the cache, {args.warm} requests; RSS is VmRSS of the API "
                     f"process (mtl serve runs uvicorn in-process), at start before torch is "
                     f"imported, after 10 warm predicts, after the cold ones and after "
                     f"{args.more} more cold ones",
            "summary": summary, "cold_ms": [round(v, 2) for v in cold],
            "warm_ms": [round(v, 2) for v in warm]}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=["train", "predict", "many", "http", "all"])
    p.add_argument("--builtin-dir", type=Path, default=REPO / "app" / "builtin_models",
                   help="folder with handwriting/ and natural/ base models")
    p.add_argument("--runs", type=int, default=10, help="train: timed runs (after one warm-up)")
    p.add_argument("--base-model", default="handwriting",
                   help="train: the base model's id, or 'choose' to leave it to the job")
    p.add_argument("--requests", type=int, default=200, help="predict: requests per level")
    p.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",")],
                   default=[1, 8, 32])
    p.add_argument("--train-per-class", type=int, default=10,
                   help="predict/many: training images per class")
    p.add_argument("--classifiers", type=int, default=1000, help="many: classifiers registered")
    p.add_argument("--cold", type=int, default=100, help="many: cold requests")
    p.add_argument("--warm", type=int, default=100, help="many: warm requests")
    p.add_argument("--more", type=int, default=100,
                   help="many: more cold requests before the last memory reading")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the server, and the raw forward's threads "
                        "(default: torch's default, one per core)")
    p.add_argument("--get-requests", type=int, default=1000,
                   help="http: requests per level for /healthz and the authenticated GET")
    p.add_argument("--rounds", type=int, default=2, help="http: rounds (variants alternate)")
    p.add_argument("--compare", type=Path, default=None,
                   help="http: another checkout to serve from too, alternately (e.g. `git archive "
                        "HEAD~1 | tar -x -C DIR`)")
    p.add_argument("--compare-plain-uvicorn", action="store_true",
                   help="http: serve --compare as without uvicorn[standard] (httptools and uvloop "
                        "hidden)")
    p.add_argument("--api-processes", type=lambda s: [int(v) for v in s.split(",")], default=[1],
                   help="http: serve the current checkout with each of these numbers of API "
                        "processes (mtl serve --api-processes), alternately, e.g. 1,2")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--suffix", default="", help="appended to the report's name, for a variant")
    args = p.parse_args(argv)
    args.builtin_dir = args.builtin_dir.resolve()
    names = ["train", "predict", "many"] if args.benchmark == "all" else [args.benchmark]
    runners = {"train": (bench_train, "time-to-classifier"), "predict": (bench_predict, "predict"),
               "many": (bench_many, "many-classifiers"), "http": (bench_http, "http")}
    command = "python -m benchmarks.speed_service " + " ".join(argv or sys.argv[1:])
    for name in names:
        before = machine()
        started = time.perf_counter()
        report = runners[name][0](args)
        report.update({"machine": before, "machine_after": machine(), "commit": git_commit(),
                       "command": command, "wall_s": round(time.perf_counter() - started, 1),
                       "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        report["environment"] = {k: v for k, v in os.environ.items()
                                 if k.startswith("MTL_PREDICT") or k == "OMP_NUM_THREADS"}
        write_report(runners[name][1] + args.suffix, report, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
