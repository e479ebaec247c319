"""What every `mtl` command shares: the parser, its help format, argument types, output helpers
and the errors that decide the exit status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


class CommandFailed(Exception):
    """The service refused a request or a job did not succeed: one line, exit status 1."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, as ArgumentDefaultsHelpFormatter does, unless
    the help already says what the default is (`default: the checkpoint's card` reads better than
    `(default: None)`); a required option says so instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if "default" in text.lower() or not action.option_strings:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """A mistake in the arguments is one line, `error: ...`, exit status 2, as every expected
    mistake of this command is (subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def one_of(what: str, values: Sequence[str]) -> Callable[[str], str]:
    """An argument type for `choices=values` that names what was wrong as the ML core does."""

    def check(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {text!r}; known: {', '.join(values)}")
        return text

    check.__name__ = what
    return check


def setting_int(field: str) -> Callable[[str], int]:
    """An argument type for an integer Settings field, bounded as the field is (one source for
    the bounds, so the flag and the environment variable refuse the same values)."""
    from annotated_types import Ge, Le

    from app.infra.settings import Settings

    metadata = Settings.model_fields[field].metadata
    low = next((cast(int, m.ge) for m in metadata if isinstance(m, Ge)), None)
    high = next((cast(int, m.le) for m in metadata if isinstance(m, Le)), None)

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, got {value}")
        return value

    check.__name__ = field
    return check


def command(sub: argparse._SubParsersAction, name: str, text: str, **kwargs: Any) -> Any:
    """A subcommand parser with `text` as its one-line help and description."""
    return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter,
                          **kwargs)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    # Logs (no terminal) get a line every 30 s instead of a redraw several times a second.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="it", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.1 if tty else 30.0)


