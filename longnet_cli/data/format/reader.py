"""Reading a corpus version: ``TokenizedCorpus.open(PATH)``, the public way to open a corpus.

The stream of all shards concatenated is what training reads: ``TokenizedCorpus.tokens`` gives
any window of it, zero-copy while the window stays inside one shard. Documents, their lengths
and splits come from documents.parquet, a column at a time; the tokenizer from tokenizer.model,
checked against the manifest. numpy, pyarrow, stdlib only.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longnet_cli.core.files import sha256_bytes
from longnet_cli.data import versions
from longnet_cli.data.format import verify as verification
from longnet_cli.data.format.errors import CorpusError, corrupt
from longnet_cli.data.format.layout import DOCUMENTS_FILE, MANIFEST_FILE, SPLITS, TOKENIZER_FILE
from longnet_cli.data.format.manifest import parse_manifest
from longnet_cli.data.format.schema import DOCUMENTS_SCHEMA, DTYPES, LEGACY_DOCUMENTS_NAMES


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
        self.dtype = DTYPES[manifest["dtype"]]
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

    # -- tokenizer --------------------------------------------------------------------------

    def tokenizer_bytes(self) -> bytes:
        """tokenizer.model's bytes, checked against the manifest's tokenizer_sha256: a damaged
        or replaced model raises CorruptCorpusError naming it (read once; a few MB at most)."""
        path = self.tokenizer_path
        try:
            data = path.read_bytes()
        except OSError as err:
            raise corrupt(f"{path}: cannot read the tokenizer: {err.strerror or err}") from None
        digest = sha256_bytes(data)
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

    # -- verification (``verify.py``) -------------------------------------------------------

    def verify(self, full: bool = False) -> list[str]:
        """Every problem found, each naming its file; an empty list means the corpus is sound
        (``verify.find_problems``: cheap checks, or with ``full`` every byte)."""
        return verification.find_problems(self, full=full)

    def unverified(self) -> list[str]:
        """The files ``verify(full=True)`` cannot check, each with why (``verify.unverified``)."""
        return verification.unverified(self)
