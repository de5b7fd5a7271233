"""The errors of reading a tokenized corpus: not a corpus (exit 2), or a damaged one (exit 1)."""

from __future__ import annotations

from longnet_cli.core.errors import DamagedFileError, InputError, one_line

REBUILD_HINT = "the corpus is damaged: longnet tokenize --force rebuilds it"


class CorpusError(InputError):
    """A path that is not a tokenized corpus (exit 2); the message names it. Its subclass
    ``CorruptCorpusError`` is a corpus whose files are damaged (exit 1)."""


class CorruptCorpusError(CorpusError, DamagedFileError):
    """A file of a tokenized corpus that is damaged (unparseable, missing, wrong size, failing
    its checks): exit 1, one line naming the file. Still a CorpusError, so every reader that
    handles a bad corpus handles it."""

    exit_code = 1


def corrupt(message: str) -> CorruptCorpusError:
    """A CorruptCorpusError of ``message`` (naming the file) on one line, with the rebuild hint."""
    return CorruptCorpusError(f"{one_line(message)}; {REBUILD_HINT}")
