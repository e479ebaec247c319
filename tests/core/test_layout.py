"""docs/architecture.md's size rules, kept by a test: no module of the service (app/, worker/,
the client) over 400 lines, and no function over 60 anywhere outside tests and migrations but the
few listed below, each with its reason. The import rules are `lint-imports`'s (pyproject.toml),
which `make test` runs."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("app", "worker", "clients/python/mtl_client")
FUNCTION_ROOTS = (*ROOTS, "models", "benchmarks", "scripts")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Functions that stay longer, and why.
LONG_FUNCTIONS = {
    "benchmarks/speed/service_scenarios.py:bench_predict": "a measurement protocol, read top to bottom",
    "benchmarks/speed/service_http.py:bench_http": "a measurement protocol, read top to bottom",
    "benchmarks/speed/service_scenarios.py:bench_many": "a measurement protocol, read top to bottom",
    "benchmarks/tune.py:main": "the tuning protocol's steps in the order they run",
    "benchmarks/table1/report.py:merge": "one pass of checks over the parts, each with its own message",
    "benchmarks/table1/report.py:write_markdown": "the report's sections in the order they are printed",
}


def sources(roots: tuple[str, ...] = ROOTS) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def test_modules_and_functions_stay_short() -> None:
    assert len(sources()) > 50
    too_long: list[str] = []
    for path in sources():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
    allowed = set()
    for path in sources(FUNCTION_ROOTS):
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length <= MAX_FUNCTION_LINES:
                    continue
                if f"{name}:{node.name}" in LONG_FUNCTIONS:
                    allowed.add(f"{name}:{node.name}")
                else:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
    # A listed function that got short leaves the list.
    assert allowed == set(LONG_FUNCTIONS), set(LONG_FUNCTIONS) - allowed


def test_the_architecture_page_lists_every_module_and_nothing_else() -> None:
    """docs/architecture.md's module table matches the tree: each module of a layer is named in
    its row, and each name in a row is a module (or a package) there."""
    import re

    rows = re.findall(r"^\| `([\w/]+)` \| (.+) \|$", (REPO / "docs" / "architecture.md").read_text(),
                      re.M)
    assert {folder for folder, _ in rows} >= {"app/api", "app/service", "app/infra", "app/cli",
                                               "worker", "models", "clients/python/mtl_client"}
    for folder, text in rows:
        named = set(re.findall(r"`(\w+)/?`", re.sub(r"\([^)]*\)", "", text)))
        actual = {p.stem for p in (REPO / folder).glob("*.py")} - {"__init__", "__main__"}
        actual |= {p.name for p in (REPO / folder).iterdir() if (p / "__init__.py").exists()}
        assert actual <= named, (folder, sorted(actual - named))
        assert named <= actual, (folder, sorted(named - actual))
