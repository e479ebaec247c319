"""The Table 1 harness end to end on a tiny budget (the real runs are benchmarks, not tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import main


def test_table1_harness_writes_json_markdown_and_chart(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "t1"
    assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                 "--methods", "transfer,protonet,mtl-reptile", "--device", "cpu"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert {(c["method"], c["ways"], c["shots"]) for c in report["cells"]} == {
        (m, 5, s) for m in ("transfer", "protonet", "mtl-reptile") for s in (1, 15)}
    assert all(c["queries"] == (5 if c["shots"] == 15 else 15) for c in report["cells"])
    # Equal budget: a method with costlier iterations runs fewer of them.
    iters = {m: info["iterations"] for m, info in report["methods"].items()}
    assert iters["mtl-reptile"] < iters["transfer"]
    table = (out / "table1.md").read_text()
    assert "| 5-way 1-shot" in table and table.count("**") >= 4
    assert (out / "table1.png").read_bytes()[:4] == b"\x89PNG"
    # Running again resumes: nothing is recomputed.
    assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                 "--methods", "transfer,protonet,mtl-reptile", "--device", "cpu"]) == 0
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 6


def test_table1_merges_runs_of_disjoint_methods(shared_data: Path, tmp_path: Path) -> None:
    def smoke(methods: str, out: Path) -> None:
        assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                     "--methods", methods, "--device", "cpu"]) == 0

    smoke("transfer,protonet", tmp_path / "a")
    smoke("mtl-reptile", tmp_path / "b")
    merge = ["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(tmp_path / "ab"),
             "--merge", str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(merge) == 0
    report = json.loads((tmp_path / "ab" / "results.json").read_text())
    parts = [json.loads((tmp_path / p / "results.json").read_text()) for p in ("a", "b")]
    assert report["cells"] == parts[0]["cells"] + parts[1]["cells"]
    assert set(report["methods"]) == {"transfer", "protonet", "mtl-reptile"}
    assert report["wall_clock_seconds"] == max(p["wall_clock_seconds"] for p in parts)
    assert set(report["merged_from"]) == {str(tmp_path / "a"), str(tmp_path / "b")}
    table = (tmp_path / "ab" / "table1.md").read_text()
    assert "| Transfer | ProtoNet | MTL-Reptile |" in table and "Merged from runs side by side" in table
    assert (tmp_path / "ab" / "table1.png").read_bytes()[:4] == b"\x89PNG"

    # A method in two parts, a missing folder, or another profile is refused with a clear error.
    for parts_args, message in (([tmp_path / "a", tmp_path / "a"], "transfer is in both"),
                                ([tmp_path / "a", tmp_path / "nope"], "does not exist")):
        with pytest.raises(SystemExit, match=message):
            main([*merge[:-2], *map(str, parts_args)])
    with pytest.raises(SystemExit, match="not omniglot/quick"):
        main(["bench", "table1", "--dataset", "omniglot", "--profile", "quick", "--merge", str(tmp_path / "a"),
              "--out", str(tmp_path / "x")])
