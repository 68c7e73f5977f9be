"""What every command line of the package shares: one ``error:`` line for user mistakes, help with defaults."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def fail(message: str) -> NoReturn:
    """A user mistake: one line on stderr and exit status 2, never a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse's own errors (unknown option, bad value) end with one ``error:`` line as well."""

    def error(self, message: str) -> NoReturn:
        fail(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)
