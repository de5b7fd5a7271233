"""The tokenized corpus on disk: token shards, a documents table and a manifest.

One version of a corpus is one directory (DESIGN.md, "Data on disk"):

    manifest.json       written last and atomically; FORMAT_VERSION, tokenizer hash, totals, shards,
                        documents.parquet's sha256 and the manifest's own (``manifest_sha256``)
    tokenizer.model     the SentencePiece model that produced the ids
    shard-NNNNN.bin     raw little-endian token ids (uint16 or uint32), documents concatenated,
                        each followed by EOS; every shard holds exactly ``shard_tokens`` tokens
                        except the last, so a document may continue in the next shard
    documents.parquet   one row per document: where it starts, its length, its source

``longnet tokenize`` writes each build as ``OUT/versions/N/`` and points ``OUT/manifest.json``
at the current one (``versions.py``); a flat directory (the files directly in it) is read as
it is. ``TokenizedCorpus.open`` resolves the pointer once and reads only that version, under a
shared lock that keeps a rebuild from removing it.

The stream of all shards concatenated is what training reads: ``TokenizedCorpus.tokens`` gives
any window of it, zero-copy while the window stays inside one shard. numpy, pyarrow, stdlib only.

Every file's content is recorded: each shard's and tokenizer.model's sha256, documents.parquet's
(``documents_sha256``), and the manifest's own (``manifest_sha256``: the sha256 of the manifest's
text as ``write_manifest`` writes it, sorted keys and indent 2, without that key; a change of any
key, value or type changes it, whitespace does not). ``verify(full=True)`` (``longnet inspect``)
checks them all; a corpus written before these two were recorded still reads, and ``unverified``
says which files cannot be checked.

Errors, the same for every command that reads a corpus (train, eval, generate, inspect): a path
that is no corpus at all (no directory, no manifest.json, a pointer to no version) raises
``CorpusError``, exit 2: the user named the wrong directory. A corpus whose own files are
damaged (a manifest.json that does not parse or has a key of the wrong type or value, a shard,
documents.parquet or tokenizer.model that is missing, of the wrong size or unreadable) raises
``CorruptCorpusError``, exit 1: the data failed, and ``longnet tokenize --force`` rebuilds it.
Both are one line naming the file (and the key); ``inspect`` lists what ``verify`` finds
instead of raising, and exits 1 when anything is found.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longnet_cli.core.errors import DamagedFileError, InputError, one_line
from longnet_cli.data import versions

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
DOCUMENTS_FILE = "documents.parquet"
TEMP_SUFFIX = ".tmp"

REQUIRED_MANIFEST_KEYS = (
    "format",
    "tokenizer_sha256",
    "vocab_size",
    "dtype",
    "eos_id",
    "bos_id",
    "documents",
    "tokens",
    "bytes",
    "shards",
    "skipped",
)
SHARD_ENTRY_KEYS = ("file", "tokens", "bytes", "sha256")

DOCUMENTS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.int64()),
        ("source", pa.string()),
        ("shard", pa.int32()),
        ("offset", pa.int64()),
        ("tokens", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("split", pa.string()),
    ]
)
# documents.parquet written before held-out splits existed lacks ``split``: read as all "train"
LEGACY_DOCUMENTS_NAMES = DOCUMENTS_SCHEMA.names[:-1]
SPLITS = ("train", "heldout")  # a document's split; decided at tokenize time by its content hash

_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_HASH_CHUNK_BYTES = 8 << 20  # bounded memory for full verification
_WRITE_BUFFER_BYTES = 1 << 20
_SHARD_NAME = re.compile(r"shard-\d{5}\.bin")


class CorpusError(InputError):
    """A path that is not a tokenized corpus (exit 2); the message names it. Its subclass
    ``CorruptCorpusError`` is a corpus whose files are damaged (exit 1)."""


class CorruptCorpusError(CorpusError, DamagedFileError):
    """A file of a tokenized corpus that is damaged (unparseable, missing, wrong size, failing
    its checks): exit 1, one line naming the file. Still a CorpusError, so every reader that
    handles a bad corpus handles it."""

    exit_code = 1


REBUILD_HINT = "the corpus is damaged: longnet tokenize --force rebuilds it"


def corrupt(message: str) -> CorruptCorpusError:
    """A CorruptCorpusError of ``message`` (naming the file) on one line, with the rebuild hint."""
    return CorruptCorpusError(f"{one_line(message)}; {REBUILD_HINT}")


class DocumentPlacement(NamedTuple):
    """Where a document starts: shard index, token offset within it, token count without EOS."""

    shard: int
    offset: int
    tokens: int


def token_dtype(vocab_size: int) -> str:
    """The shard dtype for a vocabulary: "uint16" up to 65,536 ids, else "uint32"."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")


def shard_name(index: int) -> str:
    """``shard-00000.bin`` for index 0."""
    return f"shard-{index:05d}.bin"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


_fsync_directory = versions.fsync_directory


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it into place."""
    temp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with open(temp, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class ShardWriter:
    """Append documents to ``shard-NNNNN.bin`` files of exactly ``shard_tokens`` tokens each.

    Usage::

        with ShardWriter(directory, token_dtype(vocab_size), shard_tokens, eos_id) as writer:
            for ids in documents:
                writer.begin_document()
                writer.write(ids)           # any number of calls, any lengths
                placement = writer.end_document()
            shards = writer.close()         # the manifest's "shards" entries

    Shards are written as ``shard-NNNNN.bin.tmp`` and renamed by ``close()``; an exception inside
    the ``with`` block (or ``abort()``) deletes them, so a final name always means a whole shard.
    """

    def __init__(self, directory: Path, dtype: str, shard_tokens: int, eos_id: int) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.directory = Path(directory)
        self.dtype = _DTYPES[dtype]
        self.shard_tokens = int(shard_tokens)
        self._max_id = int(np.iinfo(self.dtype).max)
        if not 0 <= eos_id <= self._max_id:
            raise ValueError(f"eos_id {eos_id} does not fit in {dtype}")
        self._eos = np.array([eos_id], dtype=self.dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._finished: list[dict] = []  # manifest entries of full (closed) shards
        self._temp_paths: list[Path] = []
        self._file: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self._in_shard = 0  # tokens in the open shard
        self._document: DocumentPlacement | None = None  # start of the open document
        self._document_tokens = 0
        self._document_digest = self._digest
        self._closed = False
        self._result: list[dict] | None = None

    # -- documents --------------------------------------------------------------------------

    def begin_document(self) -> None:
        """Start a document; its first token goes to the next stream position."""
        self._check_open()
        if self._document is not None:
            raise RuntimeError("begin_document() called twice without end_document()")
        shard, offset = self._next_position()
        self._document = DocumentPlacement(shard, offset, 0)
        self._document_tokens = 0
        self._document_digest = self._digest.copy()  # to go back to (``discard_document``)

    def write(self, tokens: np.ndarray) -> None:
        """Append token ids to the open document (cast to the shard dtype; range-checked)."""
        self._check_open()
        if self._document is None:
            raise RuntimeError("write() outside a document: call begin_document() first")
        ids = np.asarray(tokens)
        if ids.ndim != 1:
            ids = ids.reshape(-1)
        if ids.size == 0:
            return
        if ids.dtype != self.dtype:
            if ids.dtype.kind not in "iu":
                raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high > self._max_id:
                bad = low if low < 0 else high
                raise ValueError(f"token id {bad} does not fit in {self.dtype.name}")
            ids = ids.astype(self.dtype)
        self._append(np.ascontiguousarray(ids))
        self._document_tokens += int(ids.size)

    def discard_document(self) -> None:
        """Drop the open document: the stream goes back to where it began, as if it had never
        been written (shards it filled meanwhile are reopened or deleted)."""
        self._check_open()
        if self._document is None:
            raise RuntimeError("discard_document() without begin_document()")
        shard, offset = self._document.shard, self._document.offset
        if self._file is not None:
            self._file.close()
            self._file = None
        kept = shard + 1 if offset > 0 else shard  # temporary shard files still needed
        for temp in self._temp_paths[kept:]:
            temp.unlink(missing_ok=True)
        del self._temp_paths[kept:]
        del self._finished[shard:]
        self._in_shard = 0
        if offset > 0:  # the document began inside a shard: keep that shard's first tokens
            path = self._temp_paths[shard]
            self._file = open(path, "r+b", buffering=_WRITE_BUFFER_BYTES)  # noqa: SIM115
            self._file.truncate(offset * self.dtype.itemsize)
            self._file.seek(0, os.SEEK_END)
            self._digest = self._document_digest
            self._in_shard = offset
        self._document = None

    def end_document(self) -> DocumentPlacement:
        """Append EOS and return where the document starts (its EOS position if it is empty)."""
        self._check_open()
        if self._document is None:
            raise RuntimeError("end_document() without begin_document()")
        self._append(self._eos)
        placement = self._document._replace(tokens=self._document_tokens)
        self._document = None
        return placement

    # -- finishing --------------------------------------------------------------------------

    def close(self) -> list[dict]:
        """Flush and fsync the last shard, rename every shard to its final name.

        Returns the manifest's ``shards`` entries: ``{"file", "tokens", "bytes", "sha256"}``.
        Calling it again returns the same entries.
        """
        if self._result is not None:
            return self._result
        self._check_open()
        if self._document is not None:
            raise RuntimeError("close() inside a document: call end_document() first")
        if self._file is not None:
            self._finish_shard()
        for entry, temp in zip(self._finished, self._temp_paths):
            os.replace(temp, self.directory / entry["file"])
        _fsync_directory(self.directory)
        self._closed = True
        self._result = [dict(entry) for entry in self._finished]
        return self._result

    def abort(self) -> None:
        """Stop writing and delete the temporary shard files (nothing after a finished close)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._result is None:
            for temp in self._temp_paths:
                temp.unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()
        elif self._result is None and not self._closed:
            self.close()

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the shard writer is closed")

    def _next_position(self) -> tuple[int, int]:
        """(shard, offset) of the next token written; full shards are closed eagerly."""
        if self._file is None:
            return len(self._finished), 0
        return len(self._finished), self._in_shard

    def _append(self, ids: np.ndarray) -> None:
        """Write ``ids`` (already in the shard dtype), opening and finishing shards as they fill."""
        start = 0
        while start < ids.size:
            if self._file is None:
                self._open_shard()
            take = min(self.shard_tokens - self._in_shard, ids.size - start)
            chunk = memoryview(ids[start : start + take]).cast("B")
            self._file.write(chunk)
            self._digest.update(chunk)
            self._in_shard += take
            start += take
            if self._in_shard == self.shard_tokens:
                self._finish_shard()

    def _open_shard(self) -> None:
        temp = self.directory / (shard_name(len(self._finished)) + TEMP_SUFFIX)
        self._temp_paths.append(temp)
        # stays open across write() calls until the shard fills; closed by _finish_shard/abort
        self._file = open(temp, "wb", buffering=_WRITE_BUFFER_BYTES)  # noqa: SIM115
        self._digest = hashlib.sha256()
        self._in_shard = 0

    def _finish_shard(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        self._finished.append(
            {
                "file": shard_name(len(self._finished)),
                "tokens": self._in_shard,
                "bytes": self._in_shard * self.dtype.itemsize,
                "sha256": self._digest.hexdigest(),
            }
        )
        self._in_shard = 0


# -- documents table and manifest ---------------------------------------------------------------


def write_documents_table(directory: Path, rows: dict[str, list] | pa.Table) -> None:
    """Write ``documents.parquet`` atomically; ``rows`` maps each DOCUMENTS_SCHEMA column to values.

    Columns are cast to the schema (int64 ids, offsets, counts; int32 shard; string source, sha256,
    split). Rows without a ``split`` column are all "train".
    """
    names = DOCUMENTS_SCHEMA.names
    given = rows.column_names if isinstance(rows, pa.Table) else list(rows)
    if "split" not in given:
        count = rows.num_rows if isinstance(rows, pa.Table) else len(rows["doc_id"])
        train = pa.array(["train"] * count, pa.string())
        if isinstance(rows, pa.Table):
            rows = rows.append_column("split", train)
        else:
            rows = {**rows, "split": train}
        given = [*given, "split"]
    if sorted(given) != sorted(names):
        missing = sorted(set(names) - set(given))
        extra = sorted(set(given) - set(names))
        raise ValueError(f"documents table columns: missing {missing}, unexpected {extra}")
    if isinstance(rows, pa.Table):
        table = rows.select(names).cast(DOCUMENTS_SCHEMA)
    else:
        table = pa.table({name: rows[name] for name in names}, schema=DOCUMENTS_SCHEMA)
    _atomic_write(Path(directory) / DOCUMENTS_FILE, lambda file: pq.write_table(table, file))


MANIFEST_SHA256 = "manifest_sha256"  # the manifest's checksum of its own content
DOCUMENTS_SHA256 = "documents_sha256"  # documents.parquet's sha256


def manifest_text(manifest: dict[str, Any]) -> str:
    """The text ``write_manifest`` writes for ``manifest``: sorted keys, indent 2, a newline."""
    return json.dumps(manifest, sort_keys=True, indent=2) + "\n"


def manifest_digest(manifest: dict[str, Any]) -> str:
    """The ``manifest_sha256`` of ``manifest``: the sha256 of its text without that key. Every
    change of a key, value or type changes it; whitespace (which no reader sees) does not."""
    content = {key: value for key, value in manifest.items() if key != MANIFEST_SHA256}
    return hashlib.sha256(manifest_text(content).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any], seal: bool = False) -> None:
    """Write ``manifest.json`` atomically (sorted keys, indent 2); write it after everything else.

    ``format`` defaults to FORMAT_VERSION; the other required keys must be present. Extra keys
    (``fingerprint``, ``options``, ...) are kept as given. ``seal`` (or a ``manifest`` that is
    sealed already) records ``manifest_sha256``, computed anew over what is written.
    """
    content = {"format": FORMAT_VERSION, **manifest}
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in content]
    if missing:
        raise ValueError(f"manifest is missing required keys {missing}")
    if seal or MANIFEST_SHA256 in content:
        content[MANIFEST_SHA256] = manifest_digest(content)
    text = manifest_text(content)
    _atomic_write(Path(directory) / MANIFEST_FILE, lambda file: file.write(text.encode()))


def _is_int(value: Any, low: int = 0) -> bool:
    """An int (not a bool) in [low, 2**63): what the int64 arrays built from it can hold."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < 1 << 63


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` (the current version's, through the pointer): required
    keys, their types, and the format version."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CorpusError(f"{directory}: no such corpus directory")
    if not path.is_file():
        raise CorpusError(f"{directory}: not a tokenized corpus (no {MANIFEST_FILE})")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"{path}: cannot read: {err}") from None
    return parse_manifest(path, data)


def parse_manifest(path: Path, data: bytes) -> dict[str, Any]:
    """Check the bytes of the manifest at ``path``: it parses, has every required key, and
    every key any reader uses (optional ones too) has the right type and range. Anything else
    raises CorruptCorpusError (exit 1) naming ``path`` and the key."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise corrupt(f"{path}: not UTF-8 text ({err})") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise corrupt(f"{path}: invalid JSON: {err}") from None
    if not isinstance(manifest, dict):
        raise corrupt(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key in REQUIRED_MANIFEST_KEYS:
        if key not in manifest:
            raise corrupt(f"{path}: missing key {key!r}")
    version = manifest["format"]
    if version != FORMAT_VERSION or not _is_int(version):
        raise corrupt(
            f"{path}: unknown format version {version!r:.40} (this longnet reads {FORMAT_VERSION})"
        )

    def bad(key: str, expected: str) -> CorruptCorpusError:
        return corrupt(f"{path}: key {key!r} must be {expected}, got {manifest[key]!r:.60}")

    for key in ("vocab_size", "documents", "tokens", "bytes"):
        if not _is_int(manifest[key], 1 if key == "vocab_size" else 0):
            raise bad(key, "a positive integer" if key == "vocab_size" else "an integer >= 0")
    vocab_size = manifest["vocab_size"]
    if not isinstance(manifest["dtype"], str) or manifest["dtype"] not in _DTYPES:
        raise bad("dtype", f"one of {sorted(_DTYPES)}")
    if np.iinfo(_DTYPES[manifest["dtype"]]).max < vocab_size - 1:
        raise bad("dtype", f"wide enough for vocab_size {vocab_size}")
    if not _is_int(manifest["eos_id"]) or not manifest["eos_id"] < vocab_size:
        raise bad("eos_id", f"an id in [0, {vocab_size})")
    if not _is_int(manifest["bos_id"], -1) or not manifest["bos_id"] < vocab_size:
        raise bad("bos_id", f"-1 or an id in [0, {vocab_size})")
    if not isinstance(manifest["tokenizer_sha256"], str):
        raise bad("tokenizer_sha256", "a hex string")
    for key in (DOCUMENTS_SHA256, MANIFEST_SHA256):
        if key in manifest and not _is_sha256(manifest[key]):
            raise bad(key, "a sha256 (64 lowercase hex digits)")
    _check_skipped(path, manifest["skipped"])
    if "splits" in manifest:
        _check_splits(path, manifest["splits"])
    if not isinstance(manifest["shards"], list):
        raise bad("shards", "a list")
    for index, entry in enumerate(manifest["shards"]):
        where = f"{path}: key 'shards[{index}]'"
        if not isinstance(entry, dict):
            raise corrupt(f"{where} must be an object, got {entry!r:.60}")
        for key in SHARD_ENTRY_KEYS:
            if key not in entry:
                raise corrupt(f"{where}: missing key {key!r}")
        if not isinstance(entry["file"], str) or not _SHARD_NAME.fullmatch(entry["file"]):
            raise corrupt(
                f"{where}: key 'file' must be a shard-NNNNN.bin name, got {entry['file']!r:.60}"
            )
        for key in ("tokens", "bytes"):
            if not _is_int(entry[key]):
                raise corrupt(
                    f"{where}: key {key!r} must be an integer >= 0, got {entry[key]!r:.60}"
                )
        if not isinstance(entry["sha256"], str):
            raise corrupt(
                f"{where}: key 'sha256' must be a hex string, got {entry['sha256']!r:.60}"
            )
    return manifest


def _check_skipped(path: Path, skipped: Any) -> None:
    """``skipped``: an object; its ``counts`` (when present) reason -> count, ``examples``
    a list."""
    if not isinstance(skipped, dict):
        raise corrupt(f"{path}: key 'skipped' must be an object, got {skipped!r:.60}")
    counts = skipped.get("counts", {})
    if not isinstance(counts, dict) or not all(_is_int(n) for n in counts.values()):
        raise corrupt(
            f"{path}: key 'skipped.counts' must map reasons to integers >= 0, got {counts!r:.60}"
        )
    if not isinstance(skipped.get("examples", []), list):
        raise corrupt(f"{path}: key 'skipped.examples' must be a list")


def _check_splits(path: Path, splits: Any) -> None:
    """``splits``: the held-out fraction, documents and tokens per split, the fallback flag."""
    if not isinstance(splits, dict):
        raise corrupt(f"{path}: key 'splits' must be an object, got {splits!r:.60}")
    holdout = splits.get("holdout")
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 <= holdout < 1:
        raise corrupt(
            f"{path}: key 'splits.holdout' must be a fraction in [0, 1), got {holdout!r:.60}"
        )
    for name in SPLITS:
        figures = splits.get(name)
        if not isinstance(figures, dict):
            raise corrupt(f"{path}: key 'splits.{name}' must be an object, got {figures!r:.60}")
        for key in ("documents", "tokens"):
            if not _is_int(figures.get(key)):
                raise corrupt(
                    f"{path}: key 'splits.{name}.{key}' must be an integer >= 0, "
                    f"got {figures.get(key)!r:.60}"
                )
    if not isinstance(splits.get("fallback", False), bool):
        raise corrupt(f"{path}: key 'splits.fallback' must be true or false")


# -- reading ------------------------------------------------------------------------------------


class TokenizedCorpus:
    """A tokenized corpus directory opened for reading: token windows, documents, verification.

    One version, fixed when it is opened: ``directory`` is the path given (for messages),
    ``version_directory`` the version every file is read from (``directory`` itself when it is
    flat). The corpus holds a shared lock on that version until ``close`` or garbage
    collection, so a rebuild never removes it under a reader.

    Shards are opened lazily as read-only memory maps and never read whole. Pickling drops the
    memory maps and the cached documents table, so a DataLoader worker or another rank receives
    a cheap copy that re-opens what it touches (of the same version, which it locks again).
    """

    VERIFY_LEVELS = ("none", "sizes", "full")

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        version_directory: Path | None = None,
        lock: versions.ReaderLock | None = None,
    ) -> None:
        """Prefer ``TokenizedCorpus.open``, which resolves the version and checks the manifest."""
        self.directory = Path(directory)
        self.version_directory = Path(version_directory or directory)
        self._lock = lock
        self.manifest = manifest
        self.dtype = _DTYPES[manifest["dtype"]]
        self.vocab_size = int(manifest["vocab_size"])
        self.eos_id = int(manifest["eos_id"])
        self.bos_id = int(manifest["bos_id"])
        self.num_documents = int(manifest["documents"])
        shard_tokens = np.array([entry["tokens"] for entry in manifest["shards"]], dtype=np.int64)
        self.shard_tokens = shard_tokens
        self.shard_starts = np.concatenate([[0], np.cumsum(shard_tokens)[:-1]]).astype(np.int64)
        self.num_tokens = int(shard_tokens.sum())
        self._memmaps: dict[int, np.ndarray] = {}
        self._documents: pa.Table | None = None
        self._starts: np.ndarray | None = None
        self._lengths: np.ndarray | None = None
        self._heldout: np.ndarray | None = None

    @classmethod
    def open(cls, directory: Path, verify: str = "sizes") -> TokenizedCorpus:
        """Open ``directory``; ``verify``: "none", "sizes" (cheap, default) or "full" (reads all).

        Raises CorpusError on the first problem found.
        """
        if verify not in cls.VERIFY_LEVELS:
            raise ValueError(f"verify must be one of {cls.VERIFY_LEVELS}, got {verify!r}")
        directory = Path(directory)
        if not directory.is_dir():
            raise CorpusError(f"{directory}: no such corpus directory")
        opened = versions.open_version(directory)  # the pointer, resolved once
        try:
            manifest = parse_manifest(opened.manifest_path, opened.manifest_bytes)
        except CorpusError:
            opened.lock.release()
            raise
        corpus = cls(directory, manifest, opened.directory, opened.lock)
        if verify != "none":
            problems = corpus.verify(full=verify == "full")
            if problems:
                corpus.close()
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise corrupt(problems[0] + more)
        return corpus

    @property
    def version(self) -> str | None:
        """The version read, relative to ``directory`` (``versions/000003``); None when flat."""
        return versions.version_name(self.directory, self.version_directory)

    @property
    def manifest_path(self) -> Path:
        return self.version_directory / MANIFEST_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.version_directory / TOKENIZER_FILE

    @property
    def documents_path(self) -> Path:
        return self.version_directory / DOCUMENTS_FILE

    def shard_path(self, index: int) -> Path:
        return self.version_directory / self.manifest["shards"][index]["file"]

    # -- pickling ---------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_memmaps={}, _documents=None, _starts=None, _lengths=None, _heldout=None)
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = versions.reattach(self.version_directory)

    def close(self) -> None:
        """Drop the memory maps, cached tables and the lock on the version: files re-open on
        next use, but a rebuild may remove the version once no reader holds it."""
        self._memmaps.clear()
        self._documents = self._starts = self._lengths = self._heldout = None
        if self._lock is not None:
            self._lock.release()

    # -- tokens -----------------------------------------------------------------------------

    def shard(self, index: int) -> np.ndarray:
        """Shard ``index`` as a read-only memory map (opened on first use)."""
        mapped = self._memmaps.get(index)
        if mapped is None:
            count = int(self.shard_tokens[index])
            path = self.shard_path(index)
            if count == 0:
                mapped = np.empty(0, dtype=self.dtype)
            else:
                try:
                    mapped = np.memmap(path, dtype=self.dtype, mode="r", shape=(count,))
                except (OSError, ValueError) as err:  # missing, or shorter than the manifest says
                    raise corrupt(f"{path}: cannot map {count} tokens: {err}") from None
            self._memmaps[index] = mapped
        return mapped

    def tokens(self, start: int, length: int) -> np.ndarray:
        """Tokens ``[start, start + length)`` of the stream of all shards concatenated.

        A zero-copy read-only view when the window lies inside one shard, a copy otherwise.
        An id >= vocab_size (a damaged shard) raises CorruptCorpusError naming the shard.
        """
        start, length = operator.index(start), operator.index(length)
        if start < 0 or length < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"token window [{start}, {start + length}) is outside the corpus stream "
                f"[0, {self.num_tokens}) of {self.directory}"
            )
        if length == 0:
            return np.empty(0, dtype=self.dtype)
        first = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        offset = start - int(self.shard_starts[first])
        if offset + length <= self.shard_tokens[first]:
            return self._checked(first, offset, length)
        pieces, index = [], first
        while length > 0:
            take = min(length, int(self.shard_tokens[index]) - offset)
            pieces.append(self._checked(index, offset, take))
            length -= take
            index, offset = index + 1, 0
        return np.concatenate(pieces)

    def _checked(self, index: int, offset: int, length: int) -> np.ndarray:
        """Tokens ``[offset, offset + length)`` of shard ``index``, every id below vocab_size:
        a damaged shard raises CorruptCorpusError naming it here, not an index error deep in
        a model (one max per window: microseconds beside what reads it)."""
        ids = self.shard(index)[offset : offset + length]
        if (
            ids.size
            and self.vocab_size <= np.iinfo(self.dtype).max
            and ids.max() >= self.vocab_size
        ):
            where = int(np.argmax(ids >= self.vocab_size))
            raise corrupt(
                f"{self.shard_path(index)}: token id {int(ids[where])} at offset "
                f"{offset + where} is >= vocab_size {self.vocab_size}"
            )
        return ids

    # -- documents --------------------------------------------------------------------------

    def documents(self) -> pa.Table:
        """The documents table (read once, then cached)."""
        if self._documents is None:
            path = self.documents_path
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowException, ValueError) as err:
                raise corrupt(f"{path}: cannot read: {err}") from None
            if table.schema.names == LEGACY_DOCUMENTS_NAMES:
                train = pa.array(["train"] * table.num_rows, pa.string())
                table = table.append_column("split", train)
            if table.schema.names != DOCUMENTS_SCHEMA.names:
                raise corrupt(
                    f"{path}: columns {table.schema.names}, expected {DOCUMENTS_SCHEMA.names}"
                )
            try:
                self._documents = table.cast(DOCUMENTS_SCHEMA)
            except (pa.ArrowException, ValueError) as err:
                raise corrupt(f"{path}: column types do not match: {err}") from None
        return self._documents

    def _index_column(self, name: str) -> pa.ChunkedArray | None:
        """One column of documents.parquet, read alone (the documents table is not cached):
        a rank that only trains holds the columns it uses (shard, offset, tokens, split), never
        the sources and hashes. None for ``split`` in a table written before splits existed."""
        if self._documents is not None:
            return self._documents.column(name)
        path = self.documents_path
        try:
            with pq.ParquetFile(path) as parquet:
                names = parquet.schema_arrow.names
                if names == LEGACY_DOCUMENTS_NAMES and name == "split":
                    return None
                if names not in (DOCUMENTS_SCHEMA.names, LEGACY_DOCUMENTS_NAMES):
                    raise corrupt(f"{path}: columns {names}, expected {DOCUMENTS_SCHEMA.names}")
                column = parquet.read(columns=[name]).column(0)
            column = column.cast(DOCUMENTS_SCHEMA.field(name).type)
        except (OSError, pa.ArrowException, ValueError) as err:
            raise corrupt(f"{path}: cannot read column {name!r}: {err}") from None
        if len(column) != self.num_documents or (name != "split" and column.null_count):
            raise corrupt(
                f"{path}: column {name!r} has {len(column)} values ({column.null_count} null), "
                f"manifest says {self.num_documents} documents"
            )
        return column

    def document_starts(self) -> np.ndarray:
        """int64 stream position of each document's first token (its EOS when empty)."""
        if self._starts is None:
            shard = self._index_column("shard").to_numpy().astype(np.int64)
            offset = self._index_column("offset").to_numpy().astype(np.int64)
            if shard.size and (shard.min() < 0 or shard.max() >= len(self.shard_starts)):
                raise corrupt(
                    f"{self.documents_path}: shard index outside [0, {len(self.shard_starts)})"
                )
            self._starts = self.shard_starts[shard] + offset
        return self._starts

    def document_lengths(self) -> np.ndarray:
        """int64 token count of each document, EOS not counted."""
        if self._lengths is None:
            self._lengths = self._index_column("tokens").to_numpy().astype(np.int64)
        return self._lengths

    @property
    def has_splits(self) -> bool:
        """Whether the corpus records a held-out split (tokenized with ``--holdout`` > 0 support).

        Corpora tokenized before splits existed read as all "train"."""
        return "splits" in self.manifest

    def heldout_mask(self) -> np.ndarray:
        """bool per document: True where the document is held out (never trained on)."""
        if self._heldout is None:
            import pyarrow.compute as pc

            column = self._index_column("split")
            if column is None:  # written before splits existed: all train
                self._heldout = np.zeros(self.num_documents, dtype=bool)
            else:
                heldout = pc.fill_null(pc.equal(column, "heldout"), False)
                self._heldout = heldout.to_numpy(zero_copy_only=False).astype(bool)
        return self._heldout

    def split_documents(self, split: str) -> np.ndarray:
        """int64 ids, ascending, of the documents of ``split``: "train", "heldout" or "all"."""
        if split == "all":
            return np.arange(self.num_documents, dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {(*SPLITS, 'all')}, got {split!r}")
        mask = self.heldout_mask()
        return np.flatnonzero(mask if split == "heldout" else ~mask).astype(np.int64)

    def document(self, doc_id: int) -> np.ndarray:
        """The tokens of document ``doc_id`` without its EOS."""
        doc_id = operator.index(doc_id)
        if not 0 <= doc_id < self.num_documents:
            raise IndexError(
                f"document {doc_id} is outside [0, {self.num_documents}) in {self.directory}"
            )
        return self.tokens(
            int(self.document_starts()[doc_id]), int(self.document_lengths()[doc_id])
        )

    # -- verification -----------------------------------------------------------------------

    def verify(self, full: bool = False) -> list[str]:
        """Every problem found, each naming its file; an empty list means the corpus is sound.

        Always (cheap): totals agree with the shard entries, every shard exists with its size,
        tokenizer.model exists, documents.parquet has the right columns and row count.
        With ``full``: the manifest's own checksum and the sha256 of every shard, of
        tokenizer.model and of documents.parquet (those recorded: ``unverified`` names the
        others), every token id below vocab_size (in bounded chunks), and the documents table
        against the token stream.
        """
        problems: list[str] = []
        manifest_path = self.manifest_path
        itemsize = self.dtype.itemsize
        if self.num_tokens != self.manifest["tokens"]:
            problems.append(
                f"{manifest_path}: 'tokens' is {self.manifest['tokens']} but the shards hold "
                f"{self.num_tokens}"
            )
        sizes_ok = []
        for index, entry in enumerate(self.manifest["shards"]):
            path = self.version_directory / entry["file"]
            ok = True
            if entry["file"] != shard_name(index):
                problems.append(
                    f"{manifest_path}: shards[{index}] is {entry['file']}, "
                    f"expected {shard_name(index)}"
                )
            if entry["tokens"] * itemsize != entry["bytes"]:
                problems.append(
                    f"{manifest_path}: {entry['file']} has {entry['tokens']} tokens of "
                    f"{itemsize} bytes but 'bytes' is {entry['bytes']}"
                )
                ok = False
            if not path.is_file():
                problems.append(f"{path}: missing shard")
                sizes_ok.append(False)
                continue
            size = path.stat().st_size
            if size != entry["bytes"]:
                problems.append(
                    f"{path}: {size} bytes, manifest says {entry['bytes']} (truncated or replaced)"
                )
                ok = False
            sizes_ok.append(ok)
        if not self.tokenizer_path.is_file():
            problems.append(f"{self.tokenizer_path}: missing tokenizer model")
        table_ok = self._check_documents_file(problems)

        if full:
            problems.extend(self._check_manifest_digest())
            for index, entry in enumerate(self.manifest["shards"]):
                path = self.version_directory / entry["file"]
                if path.is_file():
                    problems.extend(self._check_shard_contents(path, entry, sizes_ok[index]))
            if self.tokenizer_path.is_file():
                digest = sha256_file(self.tokenizer_path)
                if digest != self.manifest["tokenizer_sha256"]:
                    problems.append(
                        f"{self.tokenizer_path}: sha256 {digest} does not match the manifest's "
                        f"tokenizer_sha256 {self.manifest['tokenizer_sha256']}"
                    )
            documents_sha256 = self.manifest.get(DOCUMENTS_SHA256)
            if documents_sha256 is not None and self.documents_path.is_file():
                digest = sha256_file(self.documents_path)
                if digest != documents_sha256:
                    table_ok = False
                    problems.append(
                        f"{self.documents_path}: sha256 {digest} does not match the manifest's "
                        f"{DOCUMENTS_SHA256} {documents_sha256} (corrupted)"
                    )
            if table_ok and all(sizes_ok) and self.num_tokens == self.manifest["tokens"]:
                problems.extend(self._check_documents_table())
        return problems

    def _check_manifest_digest(self) -> list[str]:
        """The manifest's content against its own ``manifest_sha256`` (when it records one)."""
        recorded = self.manifest.get(MANIFEST_SHA256)
        if recorded is None:
            return []
        digest = manifest_digest(self.manifest)
        if digest == recorded:
            return []
        return [
            f"{self.manifest_path}: its content hashes to {digest}, not to its {MANIFEST_SHA256} "
            f"{recorded} (changed after it was written)"
        ]

    def unverified(self) -> list[str]:
        """The files ``verify(full=True)`` cannot check, each with why: a corpus written before
        longnet recorded the sha256 of documents.parquet and of the manifest itself."""
        notes = []
        if MANIFEST_SHA256 not in self.manifest:
            notes.append(
                f"{self.manifest_path}: records no {MANIFEST_SHA256} (written by an older "
                "longnet): a change to its content cannot be told; longnet tokenize --force "
                "records it"
            )
        if DOCUMENTS_SHA256 not in self.manifest:
            notes.append(
                f"{self.documents_path}: the manifest records no {DOCUMENTS_SHA256} (written by "
                "an older longnet): only its structure is checked; longnet tokenize --force "
                "records it"
            )
        return notes

    def tokenizer_bytes(self) -> bytes:
        """tokenizer.model's bytes, checked against the manifest's tokenizer_sha256: a damaged
        or replaced model raises CorruptCorpusError naming it (read once; a few MB at most)."""
        path = self.tokenizer_path
        try:
            data = path.read_bytes()
        except OSError as err:
            raise corrupt(f"{path}: cannot read the tokenizer: {err.strerror or err}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.manifest["tokenizer_sha256"]:
            raise corrupt(
                f"{path}: sha256 {digest} does not match the manifest's tokenizer_sha256 "
                f"{self.manifest['tokenizer_sha256']} (corrupted or replaced)"
            )
        return data

    def load_tokenizer(self):
        """The corpus's SentencePieceProcessor, its model first checked against the manifest
        (``tokenizer_bytes``); a model SentencePiece cannot load raises CorruptCorpusError."""
        from longnet_cli.data.tokenizer import tokenizer_from_bytes

        data = self.tokenizer_bytes()
        try:
            return tokenizer_from_bytes(data)
        except (RuntimeError, OSError, ValueError) as err:
            raise corrupt(f"{self.tokenizer_path}: not a SentencePiece model: {err}") from None

    def _check_documents_file(self, problems: list[str]) -> bool:
        """Cheap checks of documents.parquet from its footer; False when it cannot be used."""
        path = self.documents_path
        if not path.is_file():
            problems.append(f"{path}: missing documents table")
            return False
        try:
            metadata = pq.ParquetFile(path)
            names, rows = metadata.schema_arrow.names, metadata.metadata.num_rows
        except (OSError, pa.ArrowException, ValueError) as err:
            problems.append(f"{path}: cannot read: {err}")
            return False
        if names != DOCUMENTS_SCHEMA.names and names != LEGACY_DOCUMENTS_NAMES:
            problems.append(f"{path}: columns {names}, expected {DOCUMENTS_SCHEMA.names}")
            return False
        if rows != self.num_documents:
            problems.append(f"{path}: {rows} rows, manifest says {self.num_documents} documents")
            return False
        return True

    def _check_shard_contents(self, path: Path, entry: dict, size_ok: bool) -> list[str]:
        """sha256 of one shard and (when its size is right) its largest token id, in one pass."""
        problems = []
        digest = hashlib.sha256()
        itemsize = self.dtype.itemsize
        chunk_bytes = _HASH_CHUNK_BYTES - _HASH_CHUNK_BYTES % itemsize
        position = 0  # tokens read so far
        reported_range = False
        with open(path, "rb") as file:
            while chunk := file.read(chunk_bytes):
                digest.update(chunk)
                if size_ok and not reported_range:
                    ids = np.frombuffer(chunk, dtype=self.dtype)
                    if ids.size and int(ids.max()) >= self.vocab_size:
                        where = int(np.argmax(ids >= self.vocab_size))
                        problems.append(
                            f"{path}: token id {int(ids[where])} at offset {position + where} is "
                            f">= vocab_size {self.vocab_size}"
                        )
                        reported_range = True
                    position += ids.size
        if digest.hexdigest() != entry["sha256"]:
            problems.append(
                f"{path}: sha256 {digest.hexdigest()} does not match the manifest's "
                f"{entry['sha256']} (corrupted)"
            )
        return problems

    def _check_documents_table(self) -> list[str]:
        """The documents table describes the stream: in order, back to back, each ended by EOS."""
        path = self.documents_path
        try:
            table = self.documents()
        except CorpusError as err:
            return [str(err)]
        n = table.num_rows
        doc_id = table.column("doc_id").to_numpy()
        shard = table.column("shard").to_numpy().astype(np.int64)
        offset = table.column("offset").to_numpy()
        lengths = table.column("tokens").to_numpy()
        text_bytes = table.column("bytes").to_numpy()

        def first(mask: np.ndarray) -> int:
            return int(np.argmax(mask))

        if not np.array_equal(doc_id, np.arange(n)):
            return [
                f"{path}: doc_id is not 0..{n - 1} in order (row {first(doc_id != np.arange(n))})"
            ]
        if n and (shard.min() < 0 or shard.max() >= len(self.shard_tokens)):
            bad = (shard < 0) | (shard >= len(self.shard_tokens))
            return [
                f"{path}: document {first(bad)} names shard {int(shard[first(bad)])}, "
                f"the corpus has {len(self.shard_tokens)}"
            ]
        outside = (offset < 0) | (offset >= self.shard_tokens[shard])
        if outside.any():
            doc = first(outside)
            return [
                f"{path}: document {doc} offset {int(offset[doc])} is outside "
                f"{shard_name(int(shard[doc]))}"
            ]
        negative = (lengths < 0) | (text_bytes < 0)
        if negative.any():
            return [f"{path}: document {first(negative)} has a negative 'tokens' or 'bytes'"]
        problems = []
        starts = self.shard_starts[shard] + offset
        expected = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]) if n else starts
        if not np.array_equal(starts, expected):
            doc = first(starts != expected)
            problems.append(
                f"{path}: document {doc} starts at stream position {int(starts[doc])}, "
                f"expected {int(expected[doc])} (documents must be back to back)"
            )
        elif int((lengths + 1).sum()) != self.num_tokens:
            problems.append(
                f"{path}: documents and their EOS cover {int((lengths + 1).sum())} "
                f"tokens, the shards hold {self.num_tokens}"
            )
        else:
            eos_positions = starts + lengths
            found = self._gather(eos_positions)
            missing = found != self.eos_id
            if missing.any():
                doc = first(missing)
                problems.append(
                    f"{path}: {int(missing.sum())} documents are not followed by EOS "
                    f"{self.eos_id} (first: document {doc}, token {int(found[doc])} at stream "
                    f"position {int(eos_positions[doc])})"
                )
        if int(text_bytes.sum()) != self.manifest["bytes"]:
            problems.append(
                f"{path}: documents total {int(text_bytes.sum())} bytes, manifest "
                f"says {self.manifest['bytes']}"
            )
        return problems

    def _gather(self, positions: np.ndarray) -> np.ndarray:
        """Tokens at ascending stream ``positions`` (reads only the pages they fall on)."""
        out = np.empty(positions.size, dtype=self.dtype)
        bounds = np.searchsorted(positions, np.append(self.shard_starts, self.num_tokens))
        for index in range(len(self.shard_starts)):
            low, high = int(bounds[index]), int(bounds[index + 1])
            if high > low:
                local = positions[low:high] - self.shard_starts[index]
                out[low:high] = self.shard(index)[local]
        return out
