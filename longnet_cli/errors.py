"""Errors that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations


class LongnetError(Exception):
    """A failure the user should see as one line (exit code 1), not as a traceback."""

    exit_code = 1


class InputError(LongnetError):
    """Bad usage or bad input: a file, key or value that must change (exit code 2)."""

    exit_code = 2
