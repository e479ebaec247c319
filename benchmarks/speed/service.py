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

    python -m benchmarks.speed.service train|predict|many|http|all [--builtin-dir app/builtin_models]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO, git_commit
from benchmarks.speed.report import RESULTS, machine, write_report
from benchmarks.speed.service_http import bench_http
from benchmarks.speed.service_scenarios import bench_many, bench_predict, bench_train

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
    command = "python -m benchmarks.speed.service " + " ".join(argv or sys.argv[1:])
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
