"""Verifying a corpus version against its manifest: one home for every check ``inspect`` runs.

``find_problems`` (what ``TokenizedCorpus.open`` and ``.verify`` run): cheap checks from sizes
and footers, or with ``full`` every byte (each file's sha256, every token id, the documents
table against the stream). ``inspect_checks`` adds what ``longnet inspect`` checks beyond the
files of the version: the top-level links of a versioned directory, and the manifest's split
totals against documents.parquet. Problems are returned, one line each naming its file, never
raised: the reader raises the first (``corrupt``), ``inspect`` lists them all.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from longnet_cli.core.files import HASH_CHUNK_BYTES, sha256_file
from longnet_cli.data.format.errors import CorpusError
from longnet_cli.data.format.layout import DOCUMENTS_FILE, TOKENIZER_FILE, shard_name
from longnet_cli.data.format.manifest import DOCUMENTS_SHA256, MANIFEST_SHA256, manifest_digest
from longnet_cli.data.format.schema import DOCUMENTS_SCHEMA, LEGACY_DOCUMENTS_NAMES

if TYPE_CHECKING:
    from longnet_cli.data.format.reader import TokenizedCorpus


@dataclass
class Verification:
    """What ``inspect_checks`` found: problems (the corpus is damaged) and notes (files that
    cannot be verified, and why: not problems)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def inspect_checks(corpus: TokenizedCorpus) -> Verification:
    """Everything ``longnet inspect`` checks: ``find_problems(full=True)``, the links of a
    versioned directory, and (when nothing else is wrong) the manifest's split totals; the
    notes of ``unverified``."""
    found = Verification(find_problems(corpus, full=True) + link_problems(corpus))
    found.notes = unverified(corpus)
    splits = corpus.manifest.get("splits")
    if splits is not None and not found.problems:
        found.problems.extend(split_problems(corpus, splits))
    return found


def find_problems(corpus: TokenizedCorpus, full: bool = False) -> list[str]:
    """Every problem found, each naming its file; an empty list means the corpus is sound.

    Always (cheap): totals agree with the shard entries, every shard exists with its size,
    tokenizer.model exists, documents.parquet has the right columns and row count.
    With ``full``: the manifest's own checksum and the sha256 of every shard, of
    tokenizer.model and of documents.parquet (those recorded: ``unverified`` names the
    others), every token id below vocab_size (in bounded chunks), and the documents table
    against the token stream.
    """
    problems: list[str] = []
    manifest_path = corpus.manifest_path
    itemsize = corpus.dtype.itemsize
    if corpus.num_tokens != corpus.manifest["tokens"]:
        problems.append(
            f"{manifest_path}: 'tokens' is {corpus.manifest['tokens']} but the shards hold "
            f"{corpus.num_tokens}"
        )
    sizes_ok = []
    for index, entry in enumerate(corpus.manifest["shards"]):
        path = corpus.version_directory / entry["file"]
        ok = True
        if entry["file"] != shard_name(index):
            problems.append(
                f"{manifest_path}: shards[{index}] is {entry['file']}, expected {shard_name(index)}"
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
    if not corpus.tokenizer_path.is_file():
        problems.append(f"{corpus.tokenizer_path}: missing tokenizer model")
    table_ok = _check_documents_file(corpus, problems)

    if full:
        problems.extend(_check_manifest_digest(corpus))
        for index, entry in enumerate(corpus.manifest["shards"]):
            path = corpus.version_directory / entry["file"]
            if path.is_file():
                problems.extend(_check_shard_contents(corpus, path, entry, sizes_ok[index]))
        if corpus.tokenizer_path.is_file():
            digest = sha256_file(corpus.tokenizer_path)
            if digest != corpus.manifest["tokenizer_sha256"]:
                problems.append(
                    f"{corpus.tokenizer_path}: sha256 {digest} does not match the manifest's "
                    f"tokenizer_sha256 {corpus.manifest['tokenizer_sha256']}"
                )
        documents_sha256 = corpus.manifest.get(DOCUMENTS_SHA256)
        if documents_sha256 is not None and corpus.documents_path.is_file():
            digest = sha256_file(corpus.documents_path)
            if digest != documents_sha256:
                table_ok = False
                problems.append(
                    f"{corpus.documents_path}: sha256 {digest} does not match the manifest's "
                    f"{DOCUMENTS_SHA256} {documents_sha256} (corrupted)"
                )
        if table_ok and all(sizes_ok) and corpus.num_tokens == corpus.manifest["tokens"]:
            problems.extend(_check_documents_table(corpus))
    return problems


def _check_manifest_digest(corpus: TokenizedCorpus) -> list[str]:
    """The manifest's content against its own ``manifest_sha256`` (when it records one)."""
    recorded = corpus.manifest.get(MANIFEST_SHA256)
    if recorded is None:
        return []
    digest = manifest_digest(corpus.manifest)
    if digest == recorded:
        return []
    return [
        f"{corpus.manifest_path}: its content hashes to {digest}, not to its {MANIFEST_SHA256} "
        f"{recorded} (changed after it was written)"
    ]


def unverified(corpus: TokenizedCorpus) -> list[str]:
    """The files ``verify(full=True)`` cannot check, each with why: a corpus written before
    longnet recorded the sha256 of documents.parquet and of the manifest itcorpus."""
    notes = []
    if MANIFEST_SHA256 not in corpus.manifest:
        notes.append(
            f"{corpus.manifest_path}: records no {MANIFEST_SHA256} (written by an older "
            "longnet): a change to its content cannot be told; longnet tokenize --force "
            "records it"
        )
    if DOCUMENTS_SHA256 not in corpus.manifest:
        notes.append(
            f"{corpus.documents_path}: the manifest records no {DOCUMENTS_SHA256} (written by "
            "an older longnet): only its structure is checked; longnet tokenize --force "
            "records it"
        )
    return notes


def _check_documents_file(corpus: TokenizedCorpus, problems: list[str]) -> bool:
    """Cheap checks of documents.parquet from its footer; False when it cannot be used."""
    path = corpus.documents_path
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
    if rows != corpus.num_documents:
        problems.append(f"{path}: {rows} rows, manifest says {corpus.num_documents} documents")
        return False
    return True


def _check_shard_contents(
    corpus: TokenizedCorpus, path: Path, entry: dict, size_ok: bool
) -> list[str]:
    """sha256 of one shard and (when its size is right) its largest token id, in one pass."""
    problems = []
    digest = hashlib.sha256()
    itemsize = corpus.dtype.itemsize
    chunk_bytes = HASH_CHUNK_BYTES - HASH_CHUNK_BYTES % itemsize
    position = 0  # tokens read so far
    reported_range = False
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            digest.update(chunk)
            if size_ok and not reported_range:
                ids = np.frombuffer(chunk, dtype=corpus.dtype)
                if ids.size and int(ids.max()) >= corpus.vocab_size:
                    where = int(np.argmax(ids >= corpus.vocab_size))
                    problems.append(
                        f"{path}: token id {int(ids[where])} at offset {position + where} is "
                        f">= vocab_size {corpus.vocab_size}"
                    )
                    reported_range = True
                position += ids.size
    if digest.hexdigest() != entry["sha256"]:
        problems.append(
            f"{path}: sha256 {digest.hexdigest()} does not match the manifest's "
            f"{entry['sha256']} (corrupted)"
        )
    return problems


def _check_documents_table(corpus: TokenizedCorpus) -> list[str]:
    """The documents table describes the stream: in order, back to back, each ended by EOS."""
    path = corpus.documents_path
    try:
        table = corpus.documents()
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
        return [f"{path}: doc_id is not 0..{n - 1} in order (row {first(doc_id != np.arange(n))})"]
    if n and (shard.min() < 0 or shard.max() >= len(corpus.shard_tokens)):
        bad = (shard < 0) | (shard >= len(corpus.shard_tokens))
        return [
            f"{path}: document {first(bad)} names shard {int(shard[first(bad)])}, "
            f"the corpus has {len(corpus.shard_tokens)}"
        ]
    outside = (offset < 0) | (offset >= corpus.shard_tokens[shard])
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
    starts = corpus.shard_starts[shard] + offset
    expected = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]) if n else starts
    if not np.array_equal(starts, expected):
        doc = first(starts != expected)
        problems.append(
            f"{path}: document {doc} starts at stream position {int(starts[doc])}, "
            f"expected {int(expected[doc])} (documents must be back to back)"
        )
    elif int((lengths + 1).sum()) != corpus.num_tokens:
        problems.append(
            f"{path}: documents and their EOS cover {int((lengths + 1).sum())} "
            f"tokens, the shards hold {corpus.num_tokens}"
        )
    else:
        eos_positions = starts + lengths
        found = _gather(corpus, eos_positions)
        missing = found != corpus.eos_id
        if missing.any():
            doc = first(missing)
            problems.append(
                f"{path}: {int(missing.sum())} documents are not followed by EOS "
                f"{corpus.eos_id} (first: document {doc}, token {int(found[doc])} at stream "
                f"position {int(eos_positions[doc])})"
            )
    if int(text_bytes.sum()) != corpus.manifest["bytes"]:
        problems.append(
            f"{path}: documents total {int(text_bytes.sum())} bytes, manifest "
            f"says {corpus.manifest['bytes']}"
        )
    return problems


def _gather(corpus: TokenizedCorpus, positions: np.ndarray) -> np.ndarray:
    """Tokens at ascending stream ``positions`` (reads only the pages they fall on)."""
    out = np.empty(positions.size, dtype=corpus.dtype)
    bounds = np.searchsorted(positions, np.append(corpus.shard_starts, corpus.num_tokens))
    for index in range(len(corpus.shard_starts)):
        low, high = int(bounds[index]), int(bounds[index + 1])
        if high > low:
            local = positions[low:high] - corpus.shard_starts[index]
            out[low:high] = corpus.shard(index)[local]
    return out


def link_problems(corpus: TokenizedCorpus) -> list[str]:
    """A versioned directory's top-level tokenizer.model, documents.parquet and shards are the
    current version's files (links): people and tools open those paths."""
    if corpus.version is None:
        return []
    problems = []
    for name in (TOKENIZER_FILE, DOCUMENTS_FILE, *(e["file"] for e in corpus.manifest["shards"])):
        top, current = corpus.directory / name, corpus.version_directory / name
        try:
            linked = os.path.samefile(top, current)
        except OSError:
            linked = False
        if not linked:
            problems.append(
                f"{top}: is not {current}, the current version's file (removed or replaced, or "
                "an older version's kept while a reader had it open); longnet tokenize links it "
                "again"
            )
    return problems


def split_problems(corpus: TokenizedCorpus, splits: dict[str, Any]) -> list[str]:
    """The manifest's per-split documents and tokens agree with documents.parquet's column."""
    try:
        heldout = corpus.heldout_mask()
    except CorpusError as err:
        return [str(err)]
    stream_tokens = corpus.document_lengths() + 1  # each document with its EOS
    problems = []
    for name, mask in (("train", ~heldout), ("heldout", heldout)):
        found = {"documents": int(mask.sum()), "tokens": int(np.sum(stream_tokens[mask]))}
        recorded = splits.get(name)
        if not isinstance(recorded, dict) or any(recorded.get(k) != v for k, v in found.items()):
            problems.append(
                f"{corpus.manifest_path}: splits.{name} is {recorded}, but "
                f"documents.parquet has {found['documents']} {name} documents of "
                f"{found['tokens']} tokens"
            )
    return problems
