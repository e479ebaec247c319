"""`python -m benchmarks.speed.service http` (issue 13): where a request's time goes, sent by a
wrk-style load generator on raw asyncio streams, the current checkout against another one
alternately (see benchmarks/speed/service.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO
from benchmarks.speed.report import percentile
from benchmarks.speed.serving import Service, natural_classifier, raw_forward_ms

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
