"""`python -m benchmarks.speed.service train|predict|many`: time to a classifier, predict over
HTTP against the raw forward, and predict among many registered classifiers (see
benchmarks/speed/service.py)."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.speed.report import percentile
from benchmarks.speed.serving import (
    natural_classifier,
    png,
    raw_forward_ms,
    service,
    svc_setting,
    train,
    upload,
)


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
