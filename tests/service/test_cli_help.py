"""CLI manners, without a server: every option of every `mtl` command has a one-line help that
shows its default, enumerated options are choices taken from the real registries, `mtl --version`,
and `mtl --help` does not import torch."""

from __future__ import annotations

import argparse
import subprocess
import sys
import typing
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from app.cli.common import HelpFormatter
from app.cli.main import build_parser
from app.cli.remote import JOB_STATUSES
from tests.service.conftest import REPO


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under `parser`, with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def option(path: tuple[str, ...], flag: str) -> argparse.Action:
    parser = dict(commands(build_parser()))[path]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_every_option_has_one_line_help_showing_its_default() -> None:
    seen = 0
    for path, parser in commands(build_parser()):
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), path
        formatter = HelpFormatter("mtl")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction |
                          argparse._SubParsersAction):
                continue
            where = f"mtl {' '.join(path)} {action.option_strings or action.dest}"
            assert action.help and "\n" not in action.help, f"{where}: no one-line help"
            seen += 1
            if not action.option_strings:
                continue  # a positional argument has no default to show
            shown = formatter._get_help_string(action) or ""
            assert "default" in shown.lower() or shown.endswith("(required)"), where
            if "%(default)" in shown:  # the formatter's own "(default: ...)"
                assert action.default is not None, f"{where}: shows '(default: None)'"
        assert parser.description, f"mtl {' '.join(path)}: no description"
    assert seen > 60  # the walk reached the subcommands


def test_enumerated_options_are_choices_from_the_real_registries(
        capsys: pytest.CaptureFixture[str]) -> None:
    from app.service.jobs import JobStatus
    from models.backbones import available_backbones
    from models.config import ALGORITHMS, BN_STATS, HEAD_INITS, PretrainConfig

    assert list(option(("pretrain",), "--algorithm").choices or []) == list(ALGORITHMS)
    assert sorted(option(("pretrain",), "--backbone").choices or []) == available_backbones()
    hints = typing.get_type_hints(PretrainConfig)
    for field in ("combine", "meta_schedule", "transfer_schedule", "transfer_head"):
        flag = "--" + field.replace("_", "-")
        assert tuple(option(("pretrain",), flag).choices or []) == typing.get_args(hints[field])
    assert tuple(option(("evaluate",), "--head-init").choices or []) == HEAD_INITS
    assert tuple(option(("evaluate",), "--bn-stats").choices or []) == BN_STATS
    assert tuple(s.value for s in JobStatus) == JOB_STATUSES
    assert option(("jobs", "list"), "--status").choices == JOB_STATUSES
    # A value outside the choices is one line naming the choices.
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["pretrain", "--dataset", "x", "--out", "y", "--backbone", "vgg"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("error: argument --backbone: unknown backbone 'vgg'; known: conv4, resnet12 "
                   "(see mtl pretrain --help)\n")


def test_version_and_help_without_torch() -> None:
    script = ("import sys\nfrom app.cli.main import main\n"
              "for argv in (['--version'], ['--help'], ['pretrain', '--help']):\n"
              "    try:\n        main(argv)\n    except SystemExit as exc:\n"
              "        assert exc.code == 0, argv\n"
              "assert 'torch' not in sys.modules, 'mtl --help imported torch'\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"mtl {version('mtl-service')}\n")
    assert "--algorithm {transfer,protonet," in done.stdout


def test_bench_without_the_benchmarks_says_why(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # As in the Docker image, which leaves benchmarks/ out: one line and exit 2, no traceback.
    from app.cli.main import main

    monkeypatch.setitem(sys.modules, "benchmarks", None)
    assert main(["bench", "table1", "--dataset", "omniglot"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mtl bench needs the benchmarks of a repository checkout")
    assert "Traceback" not in err


def test_the_compose_worker_has_its_own_health_check() -> None:
    """The image's HEALTHCHECK asks the API's port; the worker serves none, so it checks the
    ready file the worker writes once it takes jobs."""
    import yaml

    worker = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["worker"]
    ready = worker["command"][worker["command"].index("--ready-file") + 1]
    check = " ".join(worker["healthcheck"]["test"])
    assert ready in check and "8000" not in check
