"""The Table 1 harness end to end on a tiny budget (the real runs are benchmarks, not tests)."""

from __future__ import annotations

import json
from pathlib import Path

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
