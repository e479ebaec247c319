"""A Table 1 report's files (results.json, table1.md, table1.png, plateau.png), and the merge of
runs of disjoint methods or cells into one report."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

from benchmarks.table1.paired import add_paired_comparison, is_mtl
from benchmarks.table1.profiles import METHODS, PAPER_COLUMNS, PROFILES, Profile


def _with_defaults(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """A report's profile settings with the Profile fields added since it ran at their defaults
    (a new field's default keeps the behaviour from before it existed), so that adding a field
    does not make every earlier report unmergeable."""
    if recorded is None:
        return None
    defaults = {f.name: f.default for f in fields(Profile) if f.default is not MISSING}
    return {**defaults, **recorded}


def _for_methods(settings: dict[str, Any] | None, methods: list[str]) -> dict[str, Any] | None:
    """Profile settings as far as they concern `methods`: another method's per-method choice
    (entered in a later pre-registration version, say) does not change this part's run."""
    if settings is None:
        return None
    per_method = settings.get("per_method") or {}
    return {**settings, "per_method": {m: per_method[m] for m in methods if m in per_method}}


def write_report(report: dict[str, Any], out: Path) -> None:
    """results.json, table1.md and table1.png of a report, in `out` (with its paired comparison
    recomputed from the cells, so a run and a merge give the same)."""
    add_paired_comparison(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out / "table1.md")
    write_chart(report, out / "table1.png")
    if any(info.get("validation") for info in report.get("methods", {}).values()):
        write_curves(report, out / "plateau.png")


def write_curves(report: dict[str, Any], path: Path) -> None:
    """Validation accuracy against image passes, one line per method: where training flattens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = "validation alphabets" if report["dataset"] == "omniglot" else "validation classes"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in METHODS:
        curve = report["methods"].get(m, {}).get("validation")
        if not curve:
            continue
        xs = [p["passes"] for p in curve]
        for ax, key in zip(axes, ("accuracy", "probe_accuracy"), strict=True):
            ax.errorbar(xs, [100 * p[key] for p in curve], yerr=[100 * p[key.replace("accuracy", "ci95")] for p in curve],
                        marker="o", capsize=3, label=PAPER_COLUMNS[m],
                        linestyle="-" if is_mtl(m) else "--")
    for ax, title in zip(axes, ("fine-tuning a zero head", "prototype head, 0 steps (feature probe)"),
                         strict=True):
        ax.set_title(f"{classes}, 5-way 1-shot: {title}", fontsize=9)
        ax.set_xlabel("image passes (forward + backward)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{report['dataset']}, {report['profile']} profile: training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def _paired_text(p: dict[str, Any]) -> str:
    # A true minus sign, as in the paper's tables; percentage points.
    diff = f"{100 * p['difference']:+.2f}".replace("-", "−")
    return (f"{PAPER_COLUMNS.get(p['best_mtl'], p['best_mtl'])} − "
            f"{PAPER_COLUMNS.get(p['best_baseline'], p['best_baseline'])}: "
            f"{diff} ± {100 * p['ci95']:.2f} ({p['verdict']})")


class MergeError(ValueError):
    """Reports that cannot be combined into one table."""


def merge(parts: list[Path], dataset: str, profile_name: str, out: Path) -> dict[str, Any]:
    """Combine runs of one dataset and profile into one report: disjoint method subsets, or one
    method's disjoint cells (`--cells`) from runs of the same base model and adaptation. A part
    may itself be a merged report (its parts are then listed in its place).

    The wall clock is the longest part's (the parts of one session run side by side; parts of
    other sessions are told apart by their commits); each part's command, commit and wall clock
    are kept under `merged_from`.
    """
    reports: list[tuple[Path, dict[str, Any]]] = []
    for part in parts:
        path = part / "results.json"
        try:
            reports.append((part, json.loads(path.read_text())))
        except FileNotFoundError:
            raise MergeError(f"{path} does not exist: is {part} a table1 --out folder?") from None
        except json.JSONDecodeError as e:
            raise MergeError(f"{path} is not valid JSON: {e}") from None
    settings = asdict(PROFILES[(dataset, profile_name)])
    merged: dict[str, Any] = {}
    owner: dict[str, Path] = {}
    for part, rep in reports:
        if (rep.get("dataset"), rep.get("profile")) != (dataset, profile_name):
            raise MergeError(f"{part} holds {rep.get('dataset')}/{rep.get('profile')}, "
                             f"not {dataset}/{profile_name}")
        ran = list(rep.get("methods", {}))
        if _for_methods(_with_defaults(rep.get("profile_settings")), ran) != _for_methods(settings, ran):
            raise MergeError(f"{part} ran with other {profile_name} profile settings than this "
                             "code's; rerun it")
        if merged and _precision(rep) != _precision(merged):
            raise MergeError(f"{part} ran in precision {_precision(rep)}, another part in "
                             f"{_precision(merged)}")
        if not merged:
            merged = {k: v for k, v in rep.items() if k not in ("methods", "cells", "merged_from")}
            merged.update(methods={}, cells=[], merged_from={})
        for method, info in rep.get("methods", {}).items():
            if method in owner:
                first = merged["methods"][method]
                # The same base model: by its weights' hash where both runs recorded it.
                model = ("weights_sha256" if first.get("weights_sha256") and info.get("weights_sha256")
                         else "checkpoint")
                # Settings added to the code between the runs are left out of the comparison.
                a, b = first.get("config", {}), info.get("config", {})
                same_config = all(a[k] == b[k] for k in a.keys() & b.keys())
                if not same_config or any(first.get(k) != info.get(k) for k in ("adaptation", model)):
                    raise MergeError(f"{method} is in both {owner[method]} and {part} with other "
                                     "settings, adaptation or checkpoint")
                continue
            owner[method] = part
            merged["methods"][method] = info
        seen = {(c["method"], c["ways"], c["shots"]) for c in merged["cells"]}
        for c in rep.get("cells", []):
            if (c["method"], c["ways"], c["shots"]) in seen:
                raise MergeError(f"{c['method']} {c['ways']}-way {c['shots']}-shot is in more than "
                                 f"one part ({part} and another)")
            merged["cells"].append(c)
        if rep.get("merged_from"):
            # A merged report merged again (e.g. a committed report and new methods' runs): its
            # own parts are listed, so that every command stays on record.
            for name, info in rep["merged_from"].items():
                merged["merged_from"][name] = {**info, "via": str(part)}
        else:
            # What this part finished, which can be less than its command asked for (a run
            # stopped at a method boundary and the rest run elsewhere).
            contributed: dict[str, list[str]] = {}
            for c in rep.get("cells", []):
                contributed.setdefault(c["method"], []).append(f"{c['ways']}x{c['shots']}")
            merged["merged_from"][str(part)] = {
                **{k: rep.get(k) for k in ("command", "commit", "machine", "wall_clock_seconds")},
                "contributed": contributed}
    merged["wall_clock_seconds"] = max(r.get("wall_clock_seconds", 0) for _, r in reports)
    merged["commit"] = ", ".join(dict.fromkeys(r.get("commit", "unknown") for _, r in reports))
    merged["command"] = (f"mtl bench table1 --dataset {dataset} --profile {profile_name} --merge "
                         + " ".join(str(p) for p in parts))
    write_report(merged, out)
    return merged


def _precision(report: dict[str, Any]) -> dict[str, str]:
    """A report's pretraining and evaluation precision (fp32 for reports from before the option)."""
    return report.get("precision") or {"pretraining": "fp32", "evaluation": "fp32"}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    methods = [m for m in METHODS if m in report["methods"]]
    cells = {(c["method"], c["ways"], c["shots"]): c for c in report["cells"]}
    rows = sorted({(c["ways"], c["shots"]) for c in report["cells"]})
    lines = [f"# Table 1 on {report['dataset']} ({report['profile']} profile)", "",
             f"Unseen classes: {report['unseen_classes']}. Budget: {report['budget']}. "
             f"Evaluation: {report['evaluation']}. Accuracy % ± 95% CI; best per row in bold "
             "(ties within the CI of the best are not marked).", "",
             "| task | " + " | ".join(PAPER_COLUMNS[m] for m in methods)
             + " | best MTL − best baseline (paired 95%) |",
             "|---|" + "---|" * (len(methods) + 1)]
    paired = {(p["ways"], p["shots"]): p for p in report.get("paired", [])}
    for ways, shots in rows:
        accs = {m: cells[(m, ways, shots)]["accuracy"] for m in methods if (m, ways, shots) in cells}
        best = max(accs, key=lambda m: accs[m]) if accs else None
        out = []
        for m in methods:
            c = cells.get((m, ways, shots))
            if c is None:
                out.append("–")
                continue
            text = f"{100 * c['accuracy']:.2f} ± {100 * c['ci95']:.2f}"
            out.append(f"**{text}**" if m == best else text)
        episodes = next(iter(c["episodes"] for (m, w, s), c in cells.items() if (w, s) == (ways, shots)))
        queries = next(iter(c["queries"] for (m, w, s), c in cells.items() if (w, s) == (ways, shots)))
        out.append(_paired_text(paired[(ways, shots)]) if (ways, shots) in paired else "–")
        lines.append(f"| {ways}-way {shots}-shot ({queries} q, {episodes} ep) | " + " | ".join(out) + " |")
    if paired:
        s = report["summary"]
        lines += ["", f"Best MTL vs best baseline: {s['won']} won, {s['tied']} tied, {s['lost']} lost "
                  f"of {len(paired)} cells (paired over the same episodes; won or lost when the "
                  "95% interval of the difference excludes 0)."]
    by_validation = report.get("paired_by_validation") or []
    if by_validation:
        s = report["summary_by_validation"]
        first = by_validation[0]
        lines += ["", f"Chosen on validation classes instead of on these cells (each side's method "
                  "with the highest last point of its training curve: "
                  f"{PAPER_COLUMNS.get(first['best_mtl'], first['best_mtl'])} and "
                  f"{PAPER_COLUMNS.get(first['best_baseline'], first['best_baseline'])}): "
                  f"{s['won']} won, {s['tied']} tied, {s['lost']} lost of {len(by_validation)} cells.", ""]
        for p in by_validation:
            lines.append(f"- {p['ways']}-way {p['shots']}-shot: {_paired_text(p)}")
    if report.get("per_variant"):
        lines += ["", "Each MTL variant against the better of Transfer and its own meta-learner "
                  "(the paper's claim), paired over the same episodes:", ""]
        for p in report["per_variant"]:
            lines.append(f"- {p['ways']}-way {p['shots']}-shot: {_paired_text(p)}")
    precision = _precision(report)
    lines += ["", f"Machine: {report['machine']}. Commit: {report['commit']}. "
              + (f"Precision: pretraining {precision['pretraining']}, evaluation "
                 f"{precision['evaluation']}. " if set(precision.values()) != {"fp32"} else "")
              + ("Wall clock of the longest part: " if report.get("merged_from") else "Wall clock: ")
              + f"{report.get('wall_clock_seconds', 0) / 60:.0f} min. "
              f"Command: `{report['command']}`.", ""]
    if report.get("merged_from"):
        lines.append("Merged from these runs:")
        for part, info in report["merged_from"].items():
            wall = info.get("wall_clock_seconds")
            done = info.get("contributed")
            lines.append(f"- {part}: `{info.get('command')}` (commit {info.get('commit')}"
                         + (f", {wall / 60:.0f} min" if wall else "") + ")"
                         + ("; contributed " + "; ".join(f"{m} {', '.join(c)}" for m, c in done.items())
                            if done is not None else "")
                         + (f"; merged earlier into {info['via']}" if info.get("via") else ""))
        lines.append("")
    lines.append("Pretraining per method (iterations at an equal pass budget, seconds):")
    for m in methods:
        info = report["methods"][m]
        lines.append(f"- {m}: {info['iterations']} iterations, {info['train_seconds']:.0f} s; "
                     f"adaptation {info['adaptation']}")
    path.write_text("\n".join(lines) + "\n")


def write_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways_list = sorted({c["ways"] for c in report["cells"]})
    fig, axes = plt.subplots(1, len(ways_list), figsize=(5 * len(ways_list), 4), squeeze=False)
    for ax, ways in zip(axes[0], ways_list, strict=True):
        for m in METHODS:
            pts = sorted((c["shots"], c["accuracy"], c["ci95"]) for c in report["cells"]
                         if c["method"] == m and c["ways"] == ways)
            if not pts:
                continue
            xs, ys, es = zip(*pts, strict=True)
            ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o",
                        capsize=3, label=PAPER_COLUMNS[m],
                        linestyle="-" if m.startswith("mtl") else "--")
        ax.set_xscale("log")
        ax.set_title(f"{ways}-way")
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{report['dataset']}, {report['profile']} profile (unseen classes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
