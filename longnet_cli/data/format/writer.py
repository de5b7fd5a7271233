"""Writing a corpus version: the token shards, the one documents.parquet writer, the manifest.

The tokenize stage writes every file of a version through this module, the manifest last
(``write_manifest``): shards by ``ShardWriter`` (temporary names until ``close``, each fsynced),
the documents table by ``DocumentsWriter`` (row groups as documents complete, bounded memory),
``write_documents_table`` for a whole table at once (test fixtures, hand-made corpora).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longnet_cli.core.files import (
    TEMP_SUFFIX,
    atomic_write,
    atomic_write_text,
    fsync_directory,
    fsync_path,
    sync_open_file,
)
from longnet_cli.data.format.layout import DOCUMENTS_FILE, MANIFEST_FILE, shard_name
from longnet_cli.data.format.manifest import (
    FORMAT_VERSION,
    MANIFEST_SHA256,
    REQUIRED_MANIFEST_KEYS,
    manifest_digest,
    manifest_text,
)
from longnet_cli.data.format.schema import DOCUMENTS_SCHEMA, DTYPES

_WRITE_BUFFER_BYTES = 1 << 20


class DocumentPlacement(NamedTuple):
    """Where a document starts: shard index, token offset within it, token count without EOS."""

    shard: int
    offset: int
    tokens: int


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
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.directory = Path(directory)
        self.dtype = DTYPES[dtype]
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
        fsync_directory(self.directory)
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
        sync_open_file(self._file)
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


class DocumentsWriter:
    """``documents.parquet``: one row per document, written in row groups of ``ROW_GROUP`` as
    documents complete, so memory stays bounded however many documents a corpus has.

    Usage::

        table = DocumentsWriter(version / DOCUMENTS_FILE)
        table.add(source, placement, nbytes, sha256, split)   # doc_id: the row number
        table.close()                                          # flushed and fsynced

    ``sink`` may also be an open binary file (``write_documents_table`` writes through a
    temporary file and renames it); then ``close`` leaves flushing it to the caller.
    """

    ROW_GROUP = 1 << 14  # rows held as Python objects before they are written

    def __init__(self, sink: Path | IO[bytes]) -> None:
        self.path = Path(sink) if isinstance(sink, str | os.PathLike) else None
        self._writer = pq.ParquetWriter(sink, DOCUMENTS_SCHEMA)
        self._pending: dict[str, list] = {name: [] for name in DOCUMENTS_SCHEMA.names}
        self.rows = 0

    def add(
        self, source: str, placement: DocumentPlacement, nbytes: int, sha256: str, split: str
    ) -> None:
        """One document's row: where it starts (``placement``), its UTF-8 bytes, content hash
        and split; its ``doc_id`` is the number of rows before it."""
        values = (
            self.rows,
            source,
            placement.shard,
            placement.offset,
            placement.tokens,
            nbytes,
            sha256,
            split,
        )
        for name, value in zip(DOCUMENTS_SCHEMA.names, values):
            self._pending[name].append(value)
        self.rows += 1
        if len(self._pending["doc_id"]) >= self.ROW_GROUP:
            self._flush()

    def extend(self, columns: dict[str, list]) -> None:
        """Rows given column by column (every DOCUMENTS_SCHEMA column, equal lengths)."""
        count = len(columns["doc_id"])
        for name in DOCUMENTS_SCHEMA.names:
            self._pending[name].extend(columns[name])
        self.rows += count
        if len(self._pending["doc_id"]) >= self.ROW_GROUP:
            self._flush()

    def close(self) -> None:
        """Write the last row group and the footer; fsync the file when it was given by path."""
        self._flush()
        self._writer.close()
        if self.path is not None:
            fsync_path(self.path)

    def hold_out(self, sha256: str) -> None:
        """After ``close``: mark every document whose content hash is ``sha256`` "heldout"
        (the split rule's fallback, ``data/splits.py``), rewriting the table one row group at a
        time (the same row groups) and renaming it over the old one."""
        import pyarrow.compute as pc

        assert self.path is not None, "hold_out rewrites a table written to a path"
        rewritten = self.path.with_name(self.path.name + ".split")
        position = DOCUMENTS_SCHEMA.get_field_index("split")
        with (
            pq.ParquetFile(self.path) as source,
            pq.ParquetWriter(rewritten, DOCUMENTS_SCHEMA) as writer,
        ):
            for index in range(source.num_row_groups):
                group = source.read_row_group(index)
                chosen = pc.equal(group.column("sha256"), pa.scalar(sha256))
                split = pc.if_else(chosen, "heldout", group.column("split"))
                writer.write_table(
                    group.set_column(position, "split", split).cast(DOCUMENTS_SCHEMA)
                )
        fsync_path(rewritten)
        os.replace(rewritten, self.path)

    def _flush(self) -> None:
        self._writer.write_table(pa.table(self._pending, schema=DOCUMENTS_SCHEMA))
        self._pending = {name: [] for name in DOCUMENTS_SCHEMA.names}


def write_documents_table(directory: Path, rows: dict[str, list] | pa.Table) -> None:
    """Write ``documents.parquet`` atomically; ``rows`` maps each DOCUMENTS_SCHEMA column to values.

    Columns are cast to the schema (int64 ids, offsets, counts; int32 shard; string source, sha256,
    split). Rows without a ``split`` column are all "train".
    """
    names = DOCUMENTS_SCHEMA.names
    if isinstance(rows, pa.Table):
        rows = {name: rows.column(name).to_pylist() for name in rows.column_names}
    given = list(rows)
    if "split" not in given:
        rows = {**rows, "split": ["train"] * len(rows["doc_id"])}
        given = [*given, "split"]
    if sorted(given) != sorted(names):
        missing = sorted(set(names) - set(given))
        extra = sorted(set(given) - set(names))
        raise ValueError(f"documents table columns: missing {missing}, unexpected {extra}")

    def write(file: IO[bytes]) -> None:
        table = DocumentsWriter(file)
        table.extend({name: list(rows[name]) for name in names})
        table.close()

    atomic_write(Path(directory) / DOCUMENTS_FILE, write)


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
    atomic_write_text(Path(directory) / MANIFEST_FILE, manifest_text(content))
