"""Errors that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LongnetError(Exception):
    """A failure the user should see as one line (exit code 1), not as a traceback."""

    exit_code = 1


class InputError(LongnetError):
    """Bad usage or bad input: a file, key or value that must change (exit code 2)."""

    exit_code = 2


class DamagedFileError(LongnetError):
    """A file that cannot be read as what it should be (truncated, corrupted, foreign, failing
    its recorded sha256): the message names it (exit code 1: the command failed on the data)."""


def one_line(message: object) -> str:
    """``message`` on one line: library errors (YAML, SentencePiece, pyarrow) span several."""
    return " ".join(str(message).split())


def _read_errors() -> tuple[type[BaseException], ...]:
    """What the libraries raise on a damaged file: the OS, parsers (ValueError: JSON, pyarrow's
    ArrowInvalid), torch.load (RuntimeError, pickle and EOF errors), safetensors, SentencePiece
    (RuntimeError)."""
    errors: tuple[type[BaseException], ...] = (
        OSError,
        ValueError,
        RuntimeError,
        EOFError,
        pickle.UnpicklingError,
    )
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover - safetensors is a dependency
        return errors
    return (*errors, SafetensorError)


@contextmanager
def reading(path: Path | str, what: str = "file") -> Iterator[None]:
    """Turn what a damaged ``path`` raises while the block reads it into one DamagedFileError
    naming it: ``with reading(weights, "model weights"): load_model(...)``.

    Only the errors a reader raises on bad bytes are mapped, and only inside the block, so the
    block must do nothing but read ``path``: a programming error elsewhere keeps its traceback
    (``--debug``). LongnetErrors pass through unchanged.
    """
    try:
        yield
    except LongnetError:
        raise
    except _read_errors() as err:
        raise DamagedFileError(f"{path}: cannot read the {what}: {one_line(err)}") from err
