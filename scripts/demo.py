"""`make demo`: the README's walk-through, end to end, on a throwaway service.

1. Builds two small sample datasets from MTL_DATA_ROOT (default ../shared/data): `glyphs` (five
   handwritten characters of Omniglot's Angelic alphabet, an evaluation alphabet the built-in
   `handwriting` model never saw, as PNGs) and `photos` (five miniImageNet-lite test classes, which
   the built-in `natural` model never saw), ten images a class, plus two held-out images a class
   in `glyphs-query/` and `photos-query/` to predict.
2. Starts `mtl serve` on a free port with a temporary data folder and creates an admin key
   (`mtl keys create`), as the README does.
3. Runs the README's commands with the client (`mtl datasets upload`, `mtl classifiers create
   --wait`, `mtl predict`, `mtl jobs list`) for both datasets, then the README's admin
   pretraining example through the Python client, and stops the server.

    .venv/bin/python scripts/demo.py                  # all of it (about a minute on 2 cores)
    .venv/bin/python scripts/demo.py --data-only DIR  # only write the sample datasets to DIR
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.harness import ServeProcess

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 10  # training images a class
QUERIES = 2  # held-out images a class, to predict
MORE = 3  # drawings a character added to the glyphs dataset later (then a retrain)

# miniImageNet-lite test classes by WordNet id: five that look unlike each other.
PHOTO_CLASSES = {
    "n02099601": "golden_retriever",
    "n02110341": "dalmatian",
    "n02129165": "lion",
    "n01981276": "king_crab",
    "n02871525": "bookshop",
}
GLYPH_ALPHABET = "Angelic"
GLYPH_CHARACTERS = (1, 5, 9, 13, 17)  # the alphabet's character numbers

# The README's admin pretraining example. Each task needs `ways` classes and `shots + queries`
# images of each: the defaults (5-way, 5 + 5) need 10 images a class; these fit any dataset of
# 5 classes with 5 images each, the glyphs here included.
PRETRAIN_EXAMPLE: dict[str, Any] = {
    "name": "my-base",
    "algorithm": "mtl-reptile",
    "params": {"iterations": 200, "ways": 5, "shots": 1, "queries": 4},
}


class DemoFailed(Exception):
    """A step of the walk-through did not work."""


def data_root() -> Path:
    return Path(os.environ.get("MTL_DATA_ROOT", REPO.parent / "shared" / "data"))


def build_datasets(root: Path, out: Path) -> dict[str, Path]:
    """Write the sample datasets under `out`: glyphs/ and photos/ (one folder a class),
    glyphs-query/ and photos-query/ (held-out images named after their class), and glyphs-more/
    (more drawings of each character, one folder a class: to add to the dataset later)."""
    import numpy as np
    from PIL import Image

    paths = {name: out / name
             for name in ("glyphs", "glyphs-query", "glyphs-more", "photos", "photos-query")}
    for path in paths.values():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    # Character c of images_evaluation.npz is the official id c + 965 (data/README.md).
    with (root / "omniglot" / "alphabets.csv").open() as fh:
        first = next(int(r["first_character_id"]) for r in csv.DictReader(fh)
                     if r["set"] == "evaluation" and r["alphabet"] == GLYPH_ALPHABET)
    with np.load(root / "omniglot" / "images_evaluation.npz", allow_pickle=False) as npz:
        drawings = {n: npz["images"][first - 965 + n - 1] for n in GLYPH_CHARACTERS}
    for n, images in drawings.items():
        label = f"{GLYPH_ALPHABET}-{n:02d}"
        (paths["glyphs"] / label).mkdir()
        (paths["glyphs-more"] / label).mkdir()
        for i, image in enumerate(images[:PER_CLASS + QUERIES + MORE]):
            pixels = Image.fromarray((image * 255).astype(np.uint8))
            if i < PER_CLASS:
                pixels.save(paths["glyphs"] / label / f"{i:02d}.png")
            elif i < PER_CLASS + QUERIES:
                pixels.save(paths["glyphs-query"] / f"{label}-{i:02d}.png")
            else:
                pixels.save(paths["glyphs-more"] / label / f"{i:02d}.png")
    for wnid, label in PHOTO_CLASSES.items():
        (paths["photos"] / label).mkdir()
        files = sorted((root / "miniimagenet-lite" / "test" / wnid).glob("*.jpg"))
        for i, file in enumerate(files[:PER_CLASS + QUERIES]):
            if i < PER_CLASS:
                shutil.copyfile(file, paths["photos"] / label / file.name)
            else:
                shutil.copyfile(file, paths["photos-query"] / f"{label}-{i:02d}.jpg")
    return paths


class Demo:
    """A throwaway `mtl serve` and the `mtl` commands run against it, each shown as it runs."""

    def __init__(self, workdir: Path, data_dir: Path) -> None:
        # Only the demo's own settings: a developer's MTL_DATABASE_URL must not be touched.
        keep = ("MTL_DATA_ROOT", "MTL_TORCH_THREADS")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MTL_") or k in keep}
        self.env["MTL_DATA_DIR"] = str(workdir / "service")
        # The commands run in the sample data's folder, as a user's in theirs: short paths.
        self.cwd = data_dir
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        self.url = ""
        self.log = workdir / "serve.log"
        self.server: ServeProcess | None = None

    def start(self) -> None:
        from benchmarks.harness import ServeProcess, ServiceNotReady

        self.server = ServeProcess(self.env, self.log)
        self.url = self.server.url
        print(f"$ mtl serve --port {self.server.port}   (log: {self.log})", flush=True)
        try:
            self.server.wait_ready(timeout=180)
        except ServiceNotReady:
            raise DemoFailed("mtl serve did not start") from None
        self.env["MTL_URL"] = self.url
        self.env["MTL_API_KEY"] = self.mtl("keys", "create", "--tenant", "demo", "--admin",
                                           show=False)

    def stop(self) -> None:
        if self.server is not None and self.server.proc.poll() is None:
            print("stopping mtl serve", flush=True)
            self.server.stop()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def mtl(self, *args: str, show: bool = True) -> str:
        """Run `mtl ARGS` as the README does; its stdout (an id, a table) is returned and shown
        (unless `show` is false), its stderr (progress, notes) goes straight to the terminal."""
        print("$ mtl " + " ".join(shlex.quote(a) for a in args), flush=True)
        done = subprocess.run([sys.executable, "-m", "app.cli", *args], env=self.env,
                              cwd=self.cwd, stdout=subprocess.PIPE, text=True)
        print(done.stdout if show else "(not shown)\n", end="", flush=True)
        if done.returncode != 0:
            raise DemoFailed(f"mtl {args[0]} exited with {done.returncode}")
        return done.stdout.strip()


def walk_through(demo: Demo, data: dict[str, Path]) -> None:
    """The README's walk-through: both datasets, then the admin pretraining example."""
    for dataset in ("glyphs", "photos"):
        ds = demo.mtl("datasets", "upload", dataset)
        # No --base-model: the job scores each base model on the dataset and says which won.
        clf = demo.mtl("classifiers", "create", "--dataset", ds, "--wait")
        queries = sorted(data[f"{dataset}-query"].iterdir())
        demo.mtl("predict", clf, *(f"{q.parent.name}/{q.name}" for q in queries), "--top-k", "3")
        if dataset == "glyphs":  # more drawings later, and a second version trained on them
            demo.mtl("datasets", "add", ds, "glyphs-more")
            demo.mtl("classifiers", "retrain", clf, "--wait")
            demo.mtl("classifiers", "versions", clf)
    demo.mtl("jobs", "list")

    from mtl_client import Client

    print("\n# the README's admin pretraining example, with the Python client", flush=True)
    with Client(demo.url, demo.env["MTL_API_KEY"]) as client:
        ds_id = client.upload_dataset(data["glyphs"]).id
        created = client.create_pretraining_job(ds_id, **PRETRAIN_EXAMPLE)
        print(f"pretraining job {created.job_id} -> base model {created.base_model_id}",
              flush=True)
        job = client.wait_for_job(created.job_id, timeout=900)
        print(f"job {job.id}: {job.status}" + (f": {job.error}" if job.error else ""),
              flush=True)
        if job.status != "succeeded":
            raise DemoFailed(f"the pretraining example {job.status}")
        ready = {m.id: m.status for m in client.base_models()}
        print(f"base model {created.base_model_id}: {ready.get(created.base_model_id)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-only", type=Path, metavar="DIR", default=None,
                        help="only write the sample datasets to DIR (default: run the whole demo)")
    args = parser.parse_args(argv)
    root = data_root()
    if not (root / "omniglot").is_dir() or not (root / "miniimagenet-lite").is_dir():
        print(f"error: no sample data in {root}: set MTL_DATA_ROOT to the folder holding "
              "omniglot/ and miniimagenet-lite/", file=sys.stderr)
        return 2
    if args.data_only is not None:
        for name, path in build_datasets(root, args.data_only).items():
            print(f"{name}: {path}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mtl-demo-") as tmp:
        workdir = Path(tmp)
        data = build_datasets(root, workdir / "data")
        demo = Demo(workdir, workdir / "data")
        from mtl_client import ClientError

        try:
            demo.start()
            walk_through(demo, data)
        except (ClientError, DemoFailed) as exc:
            print(f"--- mtl serve log (tail) ---\n{demo.tail()}\nerror: {exc}", file=sys.stderr)
            return 1
        finally:
            demo.stop()
    print("demo done: every step of the README's walk-through worked")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
