"""An archive's size unpacked does not decide the API's memory: members are streamed to disk."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.service.test_cli import embedded_env, mtl, start_serve
from tests.utils.images import random_png

# Real processes or long runs: outside the fast loop (`pytest -m "not slow"`).
pytestmark = pytest.mark.slow

MiB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def zip_with_a_huge_member(path: Path, size: int) -> None:
    """Two good images and one member of `size` zero bytes (about 1 MB compressed)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", random_png(1))
        zf.writestr("b/1.png", random_png(2))
        with zf.open("a/huge.png", "w", force_zip64=True) as member:
            chunk = b"\0" * (16 * MiB)
            for _ in range(size // len(chunk)):
                member.write(chunk)


def test_a_900_mib_archive_member_takes_little_memory(tmp_path: Path, builtin_dir: Path) -> None:
    if not sys.platform.startswith("linux"):
        import pytest

        pytest.skip("reads the peak RSS from /proc")
    archive = tmp_path / "huge.zip"
    zip_with_a_huge_member(archive, 900 * MiB)
    assert archive.stat().st_size < 2 * MiB
    env = embedded_env(tmp_path, builtin_dir)
    serve = start_serve(env, tmp_path / "serve.log", "--no-worker")
    proc, url = serve.proc, serve.url
    try:
        headers = {"Authorization": "Bearer " + mtl("keys", "create", "--tenant", "acme",
                                                    env=env).stdout.strip()}
        small = httpx.post(f"{url}/v1/datasets", headers=headers, data={"name": "warm-up"},
                           files={"archive": ("s.zip", b"PK", "application/zip")})
        assert small.status_code == 422  # the upload path has run once
        before = peak_rss(proc.pid)
        with archive.open("rb") as fh:
            r = httpx.post(f"{url}/v1/datasets", headers=headers, data={"name": "huge"},
                           files={"archive": ("huge.zip", fh, "application/zip")}, timeout=300)
        assert r.status_code == 201, r.text
        reasons = {x["file"]: x["reason"] for x in r.json()["rejected"]}
        assert reasons == {"a/huge.png": "not a decodable image"}
        grown = peak_rss(proc.pid) - before
        assert grown < 200 * MiB, f"peak RSS grew by {grown / MiB:.0f} MiB"
        assert list((tmp_path / "data" / "uploads").iterdir()) == []  # nothing left behind
    finally:
        proc.terminate()
        proc.wait(timeout=60)
