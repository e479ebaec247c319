"""The Table 1 harness end to end on a tiny budget (the real runs are benchmarks, not tests)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.cli.main import main
from benchmarks.table1 import (
    FAIR_METHODS,
    PROFILES,
    add_paired_comparison,
    choice_cells,
    choose_adaptation,
    load_splits,
    method_config,
    write_markdown,
)


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
    assert "| 5-way 1-shot" in table
    assert (out / "table1.png").read_bytes()[:4] == b"\x89PNG"
    cells = {(c["method"], c["shots"]): c for c in report["cells"]}
    # Each row bolds exactly one cell, and it holds the row's best accuracy.
    for shots in (1, 15):
        row = next(line for line in table.splitlines() if line.startswith(f"| 5-way {shots}-shot"))
        top = max(cells[(m, shots)]["accuracy"] for m in ("transfer", "protonet", "mtl-reptile"))
        assert re.findall(r"\*\*([\d.]+) ± [\d.]+\*\*", row) == [f"{100 * top:.2f}"], row
    # Every cell keeps its episodes' accuracies, and each row pairs MTL-Reptile (the only MTL
    # variant here) with the better of Transfer and ProtoNet on them.
    assert all(len(c["per_episode"]) == 3 for c in report["cells"])
    assert all(math.isclose(sum(c["per_episode"]) / 3, c["accuracy"], abs_tol=1e-5) for c in report["cells"])
    assert [(p["ways"], p["shots"]) for p in report["paired"]] == [(5, 1), (5, 15)]
    for p in report["paired"]:
        base = max(("transfer", "protonet"), key=lambda m: cells[(m, p["shots"])]["accuracy"])
        assert (p["best_mtl"], p["best_baseline"]) == ("mtl-reptile", base)
        mtl_acc, base_acc = cells[("mtl-reptile", p["shots"])]["accuracy"], cells[(base, p["shots"])]["accuracy"]
        assert p["difference"] == pytest.approx(mtl_acc - base_acc, abs=1e-5)
    assert sum(report["summary"].values()) == 2
    assert "best MTL − best baseline (paired 95%) |" in table
    assert "of 2 cells" in table and "Best MTL vs best baseline: " in table
    # Running again resumes: nothing is recomputed.
    assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                 "--methods", "transfer,protonet,mtl-reptile", "--device", "cpu"]) == 0
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 6
    # ...unless a method's checkpoint was trained again since (another hash): its cells then
    # belong to another model and are made again; the other methods' stay.
    stale = json.loads((out / "results.json").read_text())
    for c in stale["cells"]:
        c["accuracy"] = 2.0
    stale["methods"]["transfer"]["weights_sha256"] = "0" * 64
    (out / "results.json").write_text(json.dumps(stale))
    assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                 "--methods", "transfer,protonet,mtl-reptile", "--device", "cpu"]) == 0
    again = json.loads((out / "results.json").read_text())
    assert sorted((c["method"], c["accuracy"] <= 1) for c in again["cells"]) == sorted(
        [("transfer", True)] * 2 + [("protonet", False)] * 2 + [("mtl-reptile", False)] * 2)
    assert again["methods"]["transfer"]["weights_sha256"] == report["methods"]["transfer"]["weights_sha256"]


def test_table1_merges_runs_of_disjoint_methods(shared_data: Path, tmp_path: Path) -> None:
    def smoke(methods: str, out: Path) -> None:
        assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                     "--methods", methods, "--device", "cpu"]) == 0

    smoke("transfer,protonet", tmp_path / "a")
    smoke("mtl-reptile", tmp_path / "b")
    # A report from before a Profile field existed (here `rotations`) still merges: the field
    # counts at its default, which is what the code did before it.
    older = json.loads((tmp_path / "b" / "results.json").read_text())
    del older["profile_settings"]["rotations"]
    (tmp_path / "b" / "results.json").write_text(json.dumps(older))
    merge = ["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(tmp_path / "ab"),
             "--merge", str(tmp_path / "a"), str(tmp_path / "b")]
    # A per-method choice for another method (entered after the part ran, as a later
    # pre-registration version does) does not make the part unmergeable; one for its own does.
    older["profile_settings"]["per_method"] = {"mtl-reptile": {"ways": 20}}
    (tmp_path / "b" / "results.json").write_text(json.dumps(older))
    with pytest.raises(SystemExit, match="ran with other smoke profile settings"):
        main(merge)
    older["profile_settings"]["per_method"] = {"transfer": {"ways": 20}}
    (tmp_path / "b" / "results.json").write_text(json.dumps(older))
    assert main(merge) == 0
    report = json.loads((tmp_path / "ab" / "results.json").read_text())
    parts = [json.loads((tmp_path / p / "results.json").read_text()) for p in ("a", "b")]
    assert report["cells"] == parts[0]["cells"] + parts[1]["cells"]
    assert set(report["methods"]) == {"transfer", "protonet", "mtl-reptile"}
    assert report["wall_clock_seconds"] == max(p["wall_clock_seconds"] for p in parts)
    assert set(report["merged_from"]) == {str(tmp_path / "a"), str(tmp_path / "b")}
    # Neither part alone has both an MTL variant and a baseline; the merge pairs them.
    assert parts[0]["paired"] == [] and parts[1]["paired"] == []
    assert [(p["best_mtl"], p["shots"]) for p in report["paired"]] == [("mtl-reptile", 1), ("mtl-reptile", 15)]
    assert sum(report["summary"].values()) == 2
    table = (tmp_path / "ab" / "table1.md").read_text()
    assert "| Transfer | ProtoNet | MTL-Reptile |" in table and "Merged from these runs:" in table
    assert (tmp_path / "ab" / "table1.png").read_bytes()[:4] == b"\x89PNG"

    # One method's cells from two processes (--cells) on the same base model merge into one row.
    main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(tmp_path / "c"),
          "--methods", "transfer", "--cells", "5x1", "--device", "cpu"])
    shutil.copytree(tmp_path / "c" / "checkpoints", tmp_path / "d" / "checkpoints")
    main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(tmp_path / "d"),
          "--methods", "transfer", "--cells", "5x15", "--device", "cpu"])
    assert main([*merge[:-2], str(tmp_path / "c"), str(tmp_path / "d"), str(tmp_path / "b")]) == 0
    split = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert [(c["method"], c["shots"]) for c in split["cells"]] == [("transfer", 1), ("transfer", 15),
                                                                   ("mtl-reptile", 1), ("mtl-reptile", 15)]
    # Each part says what it finished, not only the command it was started with.
    assert {k: v["contributed"] for k, v in split["merged_from"].items()} == {
        str(tmp_path / "c"): {"transfer": ["5x1"]}, str(tmp_path / "d"): {"transfer": ["5x15"]},
        str(tmp_path / "b"): {"mtl-reptile": ["5x1", "5x15"]}}
    assert f"- {tmp_path / 'c'}: `mtl bench table1 --dataset omniglot --profile smoke --methods transfer " \
        "--cells 5x1`" in (tmp_path / "ab" / "table1.md").read_text()
    assert "; contributed transfer 5x15\n" in (tmp_path / "ab" / "table1.md").read_text()
    # A merged report merges again with a new part; its own parts stay on record.
    smoke("protonet", tmp_path / "e")
    assert main([*merge[:-2], str(tmp_path / "ab"), str(tmp_path / "e")]) == 0
    again = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert [(c["method"], c["shots"]) for c in again["cells"]] == [
        *[(c["method"], c["shots"]) for c in split["cells"]], ("protonet", 1), ("protonet", 15)]
    assert list(again["merged_from"]) == [str(tmp_path / p) for p in ("c", "d", "b", "e")]
    assert again["merged_from"][str(tmp_path / "c")]["via"] == str(tmp_path / "ab")
    assert again["merged_from"][str(tmp_path / "e")]["contributed"] == {"protonet": ["5x1", "5x15"]}
    assert f"; merged earlier into {tmp_path / 'ab'}\n" in (tmp_path / "ab" / "table1.md").read_text()

    # A cell in two parts, a missing folder, or another profile is refused with a clear error.
    for parts_args, message in (([tmp_path / "a", tmp_path / "a"], "transfer 5-way 1-shot is in more than one"),
                                ([tmp_path / "a", tmp_path / "nope"], "does not exist")):
        with pytest.raises(SystemExit, match=message):
            main([*merge[:-2], *map(str, parts_args)])
    with pytest.raises(SystemExit, match="--cells 7x1 not in the smoke profile's grid"):
        main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--cells", "7x1",
              "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="WAYSxSHOTS"):
        main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--cells", "5by1",
              "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="not omniglot/quick"):
        main(["bench", "table1", "--dataset", "omniglot", "--profile", "quick", "--merge", str(tmp_path / "a"),
              "--out", str(tmp_path / "x")])


def _cell(method: str, ways: int, shots: int, per_episode: list[float] | None, accuracy: float) -> dict[str, Any]:
    cell: dict[str, Any] = {"method": method, "ways": ways, "shots": shots, "queries": 15, "episodes": 4,
                            "accuracy": accuracy, "ci95": 0.05}
    if per_episode is not None:
        cell["per_episode"] = per_episode
    return cell


def test_paired_comparison_of_best_mtl_and_best_baseline(tmp_path: Path) -> None:
    report: dict[str, Any] = {"cells": [
        # 5-way 1-shot: MTL-Reptile 0.9 beats ProtoNet 0.7 (Transfer 0.5) in every episode.
        _cell("transfer", 5, 1, [0.5, 0.5, 0.5, 0.5], 0.5),
        _cell("protonet", 5, 1, [0.6, 0.8, 0.6, 0.8], 0.7),
        _cell("mtl-reptile", 5, 1, [0.9, 1.0, 0.8, 0.9], 0.9),
        # 5-way 5-shot: ProtoNet 0.95 beats both MTL variants at 0.8; the tie between them goes to
        # MTL-Reptile, listed first in METHODS, whatever the cells' order.
        _cell("mtl-fomaml", 5, 5, [0.8, 0.8, 0.8, 0.8], 0.8),
        _cell("mtl-reptile", 5, 5, [0.7, 0.8, 0.8, 0.9], 0.8),
        _cell("mtl-maml", 5, 5, [0.6, 0.6, 0.6, 0.6], 0.6),
        _cell("protonet", 5, 5, [0.9, 0.9, 1.0, 1.0], 0.95),
        # 20-way 1-shot: MTL-MAML ahead on average, but differences +0.2, 0, 0, -0.1: tied.
        _cell("transfer", 20, 1, [0.5, 0.3, 0.5, 0.3], 0.4),
        _cell("protonet", 20, 1, [0.3, 0.3, 0.3, 0.3], 0.3),
        _cell("mtl-maml", 20, 1, [0.7, 0.3, 0.5, 0.2], 0.425),
        # 20-way 5-shot: baselines only; 5-way 15-shot: an old report without per-episode results.
        _cell("transfer", 20, 5, [0.5, 0.5, 0.5, 0.5], 0.5),
        _cell("protonet", 20, 5, [0.6, 0.6, 0.6, 0.6], 0.6),
        _cell("protonet", 5, 15, None, 0.99),
        _cell("mtl-reptile", 5, 15, None, 0.98),
    ]}
    add_paired_comparison(report)
    paired = {(p["ways"], p["shots"]): p for p in report["paired"]}
    assert list(paired) == [(5, 1), (5, 5), (20, 1)]

    # The 95% half-width is 1.96 x the sample standard deviation of the differences / sqrt(4).
    won = paired[(5, 1)]  # differences 0.3, 0.2, 0.2, 0.1: sd sqrt(0.02 / 3)
    assert (won["best_mtl"], won["best_baseline"], won["verdict"]) == ("mtl-reptile", "protonet", "won")
    assert won["difference"] == pytest.approx(0.2)
    assert won["ci95"] == pytest.approx(1.96 * math.sqrt(0.02 / 3) / 2)
    lost = paired[(5, 5)]  # differences -0.2, -0.1, -0.2, -0.1: sd sqrt(0.01 / 3)
    assert (lost["best_mtl"], lost["best_baseline"], lost["verdict"]) == ("mtl-reptile", "protonet", "lost")
    assert lost["difference"] == pytest.approx(-0.15)
    assert lost["ci95"] == pytest.approx(1.96 * math.sqrt(0.01 / 3) / 2)
    tied = paired[(20, 1)]  # differences 0.2, 0, 0, -0.1: sd sqrt(0.0475 / 3)
    assert (tied["best_mtl"], tied["best_baseline"], tied["verdict"]) == ("mtl-maml", "transfer", "tied")
    assert tied["difference"] == pytest.approx(0.025)
    assert tied["ci95"] == pytest.approx(1.96 * math.sqrt(0.0475 / 3) / 2)
    assert report["summary"] == {"won": 1, "tied": 1, "lost": 1}

    # The paper's claim, per variant: against the better of Transfer and its own meta-learner
    # only (ProtoNet is neither for MTL-Reptile); a variant without either is left out.
    variants = {(p["ways"], p["shots"], p["best_mtl"]): p for p in report["per_variant"]}
    assert list(variants) == [(5, 1, "mtl-reptile"), (20, 1, "mtl-maml")]
    own = variants[(5, 1, "mtl-reptile")]  # against Transfer: differences 0.4, 0.5, 0.3, 0.4
    assert (own["best_baseline"], own["verdict"]) == ("transfer", "won")
    assert own["difference"] == pytest.approx(0.4)
    assert variants[(20, 1, "mtl-maml")]["verdict"] == "tied"

    # The same comparison whatever order the cells come in (a merge concatenates parts).
    shuffled = {"cells": report["cells"][::-1]}
    add_paired_comparison(shuffled)
    assert shuffled["paired"] == report["paired"]
    assert shuffled["per_variant"] == report["per_variant"]

    methods = {m: {"iterations": 10, "train_seconds": 1.0, "adaptation": {}}
               for m in ("transfer", "protonet", "mtl-reptile", "mtl-maml", "mtl-fomaml")}
    report.update(dataset="omniglot", profile="smoke", unseen_classes="u", budget="b", evaluation="e",
                  machine="m", commit="c", command="x", methods=methods)
    write_markdown(report, tmp_path / "table1.md")
    rows = {line.split(" (")[0]: line for line in (tmp_path / "table1.md").read_text().splitlines()
            if line.startswith("| ") and "-way" in line}
    assert rows["| 5-way 1-shot"].endswith("| MTL-Reptile − ProtoNet: +20.00 ± 8.00 (won) |")
    assert rows["| 5-way 5-shot"].endswith("| MTL-Reptile − ProtoNet: −15.00 ± 5.66 (lost) |")
    assert rows["| 20-way 1-shot"].endswith("| MTL-MAML − Transfer: +2.50 ± 12.33 (tied) |")
    assert rows["| 20-way 5-shot"].endswith("| – |") and rows["| 5-way 15-shot"].endswith("| – |")
    assert "Best MTL vs best baseline: 1 won, 1 tied, 1 lost of 3 cells" in (tmp_path / "table1.md").read_text()
    assert "- 5-way 1-shot: MTL-Reptile − Transfer: +40.00" in (tmp_path / "table1.md").read_text()


def _curve(accuracy: float, probe: float) -> list[dict[str, Any]]:
    return [{"iteration": 1, "passes": 10, "accuracy": 0.2, "probe_accuracy": 0.2},
            {"iteration": 2, "passes": 20, "accuracy": accuracy, "probe_accuracy": probe}]


def test_comparison_with_each_side_chosen_on_validation_classes(tmp_path: Path) -> None:
    cells = [
        # On these cells MTL-ProtoNet is the best MTL variant and ProtoNet the best baseline...
        _cell("transfer", 5, 1, [0.6, 0.6, 0.6, 0.6], 0.6),
        _cell("protonet", 5, 1, [0.7, 0.7, 0.7, 0.7], 0.7),
        _cell("mtl-reptile", 5, 1, [0.65, 0.55, 0.65, 0.55], 0.6),
        _cell("mtl-protonet", 5, 1, [0.9, 0.9, 0.9, 0.9], 0.9),
        _cell("transfer", 5, 5, [0.8, 0.8, 0.8, 0.8], 0.8),
        _cell("protonet", 5, 5, [0.9, 0.9, 0.9, 0.9], 0.9),
        _cell("mtl-reptile", 5, 5, [0.81, 0.79, 0.81, 0.79], 0.8),
        _cell("mtl-protonet", 5, 5, [0.95, 0.95, 0.95, 0.95], 0.95),
    ]
    # ...but on the validation classes MTL-Reptile and Transfer stood highest (Transfer by its probe,
    # the better of its curve's two scores; earlier points do not count).
    methods = {"transfer": {"validation": _curve(0.70, 0.85)}, "protonet": {"validation": _curve(0.80, 0.81)},
               "mtl-reptile": {"validation": _curve(0.83, 0.50)}, "mtl-protonet": {"validation": _curve(0.82, 0.82)}}
    for info in methods.values():
        info.update(iterations=2, train_seconds=1.0, adaptation={})
    report: dict[str, Any] = {"cells": cells, "methods": methods, "dataset": "omniglot", "profile": "fair",
                              "unseen_classes": "u", "budget": "b", "evaluation": "e", "machine": "m",
                              "commit": "c", "command": "mtl bench table1"}
    add_paired_comparison(report)
    assert {(p["best_mtl"], p["best_baseline"]) for p in report["paired"]} == {("mtl-protonet", "protonet")}
    assert report["summary"] == {"won": 2, "tied": 0, "lost": 0}
    by_validation = {(p["ways"], p["shots"]): p for p in report["paired_by_validation"]}
    assert {(p["best_mtl"], p["best_baseline"]) for p in by_validation.values()} == {("mtl-reptile", "transfer")}
    assert by_validation[(5, 1)]["difference"] == pytest.approx(0.0)
    assert by_validation[(5, 1)]["verdict"] == "tied"
    assert report["summary_by_validation"] == {"won": 0, "tied": 2, "lost": 0}
    write_markdown(report, tmp_path / "table1.md")
    table = (tmp_path / "table1.md").read_text()
    assert "Chosen on validation classes instead of on these cells" in table
    assert "MTL-Reptile − Transfer: +0.00" in table

    # A scored method without a training curve: no choice on validation is made for its side.
    del methods["protonet"]["validation"]
    add_paired_comparison(report)
    assert report["paired_by_validation"] == [] and report["summary_by_validation"]["tied"] == 0


def test_omniglot_vinyals_splits_for_table1(shared_data: Path) -> None:
    splits = load_splits("omniglot-vinyals", PROFILES[("omniglot-vinyals", "smoke")])
    base, unseen = splits.base, splits.unseen
    assert (base.num_classes, unseen.num_classes) == (4800, 1692) and splits.validation is None
    assert not {n.rsplit("/", 1)[0] for n in base.class_names} & {n.rsplit("/", 1)[0] for n in unseen.class_names}
    # The fair profile validates on the Vinyals val split, held out of pretraining.
    fair = load_splits("omniglot-vinyals", PROFILES[("omniglot-vinyals", "fair")])
    assert (fair.base.num_classes, fair.validation.num_classes, fair.unseen.num_classes) == (4112, 688, 1692)
    assert not set(fair.base.class_names) & set(fair.validation.class_names)
    assert PROFILES[("omniglot-vinyals", "cpu")].ways == [5, 20]
    assert PROFILES[("omniglot-vinyals", "cpu")].shots == [1, 5]


def test_fair_profile_holds_out_validation_alphabets_and_draws_training_curves(
        shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "fair"
    assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "fair-smoke", "--out", str(out),
                 "--methods", "transfer,mtl-protonet", "--device", "cpu"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert "minus the 6 validation alphabets (804 characters)" in report["base_classes"]
    for method in ("transfer", "mtl-protonet"):
        info = report["methods"][method]
        # The fair recipe: the supervised half trains on mixed-class batches with momentum.
        assert info["config"]["transfer_batch"] == 64 and info["config"]["momentum"] == 0.9
        assert info["config"]["meta_schedule"] == "linear"
        curve = info["validation"]
        # Every 750 passes and at the end; passes grow, accuracies are real 5-way scores.
        assert [p["passes"] for p in curve] == sorted(p["passes"] for p in curve) and len(curve) >= 2
        assert all(0.0 <= p["accuracy"] <= 1.0 and 0.0 <= p["probe_accuracy"] <= 1.0 for p in curve)
    # Each method runs with the settings it won on validation (FAIR_METHODS), not the defaults.
    for method in ("transfer", "mtl-protonet"):
        config = report["methods"][method]["config"]
        assert all(config[k] == v for k, v in FAIR_METHODS[method].items())
    assert report["methods"]["mtl-protonet"]["config"]["beta"] == FAIR_METHODS["mtl-protonet"]["beta"] != 0.5
    # The adaptation is chosen per base model on the validation alphabets: the best of three.
    for info in report["methods"].values():
        choice = info["adaptation_choice"]
        assert len(choice) == 3
        assert info["adaptation"] == max(choice, key=lambda c: c["accuracy"])["adaptation"]
    assert (out / "plateau.png").read_bytes()[:4] == b"\x89PNG"
    assert report["paired"][0]["best_mtl"] == "mtl-protonet"

    # The best of them on the validation classes becomes a built-in model: weights, a card that
    # says what it was trained on and how it does on unseen classes, and its training curve.
    from benchmarks.ship_builtin import best_on_validation, ship
    from models.checkpoint import load_base_model

    shipped = ship(out, "omniglot", "best", "glyphs", "handwritten characters",
                   out_root=tmp_path / "builtin")
    _, card = load_base_model(shipped)
    best = best_on_validation(report)
    assert card["algorithm"] == best and card["description"] == "handwritten characters"
    assert card["adaptation"] == report["methods"][best]["adaptation"]
    assert {(r["ways"], r["shots"]) for r in card["metrics"]["unseen_classes"]["results"]} == {(5, 1)}
    assert "804 characters" in card["trained_on"] and card["machine"]
    assert (shipped / "curve.png").read_bytes()[:4] == b"\x89PNG"

    # Its default adaptation is then chosen on the validation alphabets over several cells
    # (benchmarks/choose_adaptation.py): the best mean wins and the card keeps every score.
    from benchmarks.choose_adaptation import main as choose

    rows = tmp_path / "adaptation.jsonl"
    args = ["--model", str(shipped), "--dataset", "omniglot", "--episodes", "2", "--ways", "5",
            "--shots", "1,5", "--candidates", "prototype-0-steps,zeros", "--rows", str(rows), "--apply"]
    assert choose(args) == 0
    scored = [json.loads(line) for line in rows.read_text().splitlines()]
    assert {(r["candidate"], r["shots"]) for r in scored} == {(c, s) for c in ("prototype-0-steps", "zeros")
                                                              for s in (1, 5)}
    _, card = load_base_model(shipped)
    means = {c["candidate"]: c["mean_accuracy"] for c in card["adaptation_choice"]["candidates"]}
    winner = max(means, key=lambda c: means[c])
    assert card["adaptation"] == next(r["adaptation"] for r in scored if r["candidate"] == winner)
    assert choose(args) == 0 and len(rows.read_text().splitlines()) == 4  # resumed, not recomputed
    # A retrained model in the same folder is scored afresh, never given its predecessor's rows.
    from models.checkpoint import load_checkpoint, save_checkpoint

    tensors, card = load_checkpoint(shipped)
    save_checkpoint(shipped, {k: v * 0.5 if v.is_floating_point() else v for k, v in tensors.items()}, card)
    assert choose(args) == 0 and len(rows.read_text().splitlines()) == 8


def test_a_builtin_model_is_picked_on_validation_across_reports() -> None:
    """Two candidate runs (e.g. two backbone widths, each its own profile and report): the best
    validation score over both wins, never an unseen-class number; reports validated on other
    classes do not compare."""
    from benchmarks.ship_builtin import pick, selection

    def report(profile: str, scores: dict[str, float], unseen: float, val: str = "6 alphabets") -> dict:
        return {"profile": profile, "validation_classes": val,
                "methods": {m: {"adaptation_choice": [{"accuracy": a - 0.01}, {"accuracy": a}]}
                            for m, a in scores.items()},
                "cells": [{"method": m, "accuracy": unseen} for m in scores]}

    narrow = report("builtin", {"protonet": 0.94, "transfer": 0.90}, unseen=0.99)
    wide = report("builtin-wide", {"protonet": 0.95}, unseen=0.50)
    chosen, method = pick([narrow, wide], "best")
    assert chosen is wide and method == "protonet"
    assert "protonet (builtin-wide profile)" in selection([narrow, wide], chosen, method)
    assert pick([narrow, wide], "transfer") == (narrow, "transfer")
    with pytest.raises(SystemExit, match="different classes"):
        pick([narrow, report("other", {"protonet": 0.99}, 0.9, val="16 classes")], "best")
    with pytest.raises(SystemExit, match="no report has the method 'maml'"):
        pick([narrow], "maml")
    # Nor do scores over other cells (a report from before the two-cell rule: 5-way 1-shot).
    two_cells = report("builtin", {"protonet": 0.9}, 0.9)
    for c in two_cells["methods"]["protonet"]["adaptation_choice"]:
        c["cells"] = [{"ways": 5, "shots": 1}, {"ways": 20, "shots": 5}]
    with pytest.raises(SystemExit, match="different cells"):
        pick([narrow, two_cells], "best")


def test_adaptation_is_chosen_on_the_smallest_and_largest_cells(omniglot_evaluation: Any) -> None:
    """On the Vinyals split one cell (5-way 1-shot) chose an adaptation that was 4-5 points worse
    at 20-way 5-shot: the choice now scores the profile's smallest and largest tasks, at most as
    many ways as there are validation classes, and keeps the best mean."""
    import torch

    from models.config import AdaptConfig
    from models.network import build_metanet

    class Val:
        num_classes = 688

    assert choice_cells(Val(), PROFILES[("omniglot-vinyals", "fair-long")]) == [(5, 1), (20, 5)]
    Val.num_classes = 160  # the 6 held-out background alphabets
    assert choice_cells(Val(), PROFILES[("omniglot", "fair-grid")]) == [(5, 1), (35, 15)]
    Val.num_classes = 16  # miniImageNet-lite's held-out train classes: no 20-way task
    assert choice_cells(Val(), PROFILES[("miniimagenet-lite", "fair")]) == [(5, 1), (5, 5)]
    assert choice_cells(Val(), PROFILES[("omniglot", "fair-smoke")]) == [(5, 1)]

    torch.manual_seed(0)
    net = build_metanet(backbone="conv4", filters=8, channels=1, image_size=28, meta_ways=5,
                        num_base_classes=10, mean=[0.9], std=[0.3])
    val = omniglot_evaluation.subset(list(range(0, 600, 20)))  # 30 classes of unseen characters
    candidates = [AdaptConfig(steps=0, lr=0.0, head_init="prototype", bn_stats="frozen"),
                  AdaptConfig(steps=0, lr=0.0, head_init="zeros", bn_stats="frozen")]
    rows = choose_adaptation(net, val, candidates, PROFILES[("omniglot-vinyals", "fair-long")])
    assert [[(c["ways"], c["shots"]) for c in r["cells"]] for r in rows] == [[(5, 1), (20, 5)]] * 2
    for row in rows:
        assert row["accuracy"] == pytest.approx(sum(c["accuracy"] for c in row["cells"]) / 2, abs=1e-5)
    # A zero head with no steps answers one class for everything: chance, far below prototypes.
    assert rows[1]["cells"][1]["accuracy"] == pytest.approx(1 / 20, abs=0.01)
    assert rows[0]["accuracy"] > rows[1]["accuracy"] + 0.2


def test_the_nine_cell_grid_scores_the_fair_profiles_pretraining() -> None:
    """`fair-grid` differs from `fair` in the cells scored only: every method is pretrained the
    same way, so the two reports measure the same recipe."""
    fair, grid = PROFILES[("omniglot", "fair")], PROFILES[("omniglot", "fair-grid")]
    assert (grid.ways, grid.shots) == ([5, 20, 35], [1, 5, 15])
    for method in FAIR_METHODS:
        assert method_config(method, fair) == method_config(method, grid)


def test_table1_seed_pretrains_again_apart_and_does_not_merge_with_seed_0(shared_data: Path, tmp_path: Path) -> None:
    def smoke(out: Path, *extra: str) -> dict[str, Any]:
        assert main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(out),
                     "--methods", "transfer", "--device", "cpu", *extra]) == 0
        return json.loads((out / "results.json").read_text())

    first, again = smoke(tmp_path / "s0"), smoke(tmp_path / "s1", "--seed", "1")
    a, b = first["methods"]["transfer"], again["methods"]["transfer"]
    assert (a["config"]["seed"], b["config"]["seed"]) == (0, 1)
    assert b["checkpoint"].endswith("omniglot-smoke-seed1/transfer") and a["checkpoint"].endswith("omniglot-smoke/transfer")
    assert a["weights_sha256"] != b["weights_sha256"]
    assert again["command"].endswith("--seed 1")
    # The two are replications of one method, not parts of one table.
    with pytest.raises(SystemExit, match="transfer is in both"):
        main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(tmp_path / "m"),
              "--merge", str(tmp_path / "s0"), str(tmp_path / "s1")])
    with pytest.raises(SystemExit, match="--seed must be 0 or more"):
        main(["bench", "table1", "--dataset", "omniglot", "--profile", "smoke", "--out", str(tmp_path / "x"),
              "--methods", "transfer", "--seed", "-1"])
