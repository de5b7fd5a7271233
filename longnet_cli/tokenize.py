"""Stage: corpus paths -> a tokenized corpus directory (shards, documents table, manifest).

The run: walk the corpus; if the output's manifest carries the same fingerprint (inputs'
paths, sizes and modification times, options, tokenizer) it is up to date and nothing is
written. Otherwise train or load the tokenizer, encode every document in pieces with
SentencePiece's own threads, and write a new version ``OUT/versions/N/`` (shards, documents
table, tokenizer, every file fsynced, its manifest last, recording every other file's sha256
and its own). One rename of the ``manifest.json``
symlink then makes it current (``data/versions.py``): a run that fails or is killed before
leaves the previous version current and untouched; what it wrote is removed at once or, after
SIGKILL or power loss, by the next run. Every run also removes old versions that no reader
holds (a training run keeps reading the version it opened, whatever is rebuilt meanwhile).

Output is byte-identical for any number of workers: documents are cut into pieces by their
text alone, pieces are encoded independently, and the tokenizer is trained with a fixed
thread count.

Held-out split: every document goes to "train" or "heldout" by its content hash, with a
fallback when the fraction selects none; the rule lives in ``data/splits.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longnet_cli.core.errors import InputError, LongnetError
from longnet_cli.core.files import sha256_bytes, sha256_file, write_synced
from longnet_cli.data import versions
from longnet_cli.data.format.layout import DOCUMENTS_FILE, MANIFEST_FILE, TOKENIZER_FILE
from longnet_cli.data.sources import (
    Document,
    DocumentChanged,
    Entry,
    Skip,
    read_documents,
    walk_corpus,
)
from longnet_cli.data.splits import SplitTally
from longnet_cli.data.tokenizer import encode_lossless

DEFAULT_VOCAB_SIZE = 32000
DEFAULT_SAMPLE_BYTES = 32 << 20
DEFAULT_SHARD_TOKENS = 1 << 28
DEFAULT_HOLDOUT = 0.01  # fraction of documents (by content hash) held out of training
MIN_VOCAB_SIZE = 320  # 256 byte-fallback pieces, specials, and some room to learn
BATCH_CHARS = 4 << 20  # characters handed to one multi-threaded encode call
BATCH_PIECES = 1 << 12  # and pieces at most: many tiny files must not fill memory with ids
SKIP_EXAMPLES = 100  # skipped items listed by name in the manifest (all are counted)
LOCK = ".lock"


@dataclass(frozen=True)
class TokenizeOptions:
    """What ``tokenize_corpus`` reads, how, and where it writes."""

    paths: tuple[Path, ...]
    out: Path
    group: str = "file"  # "file" or "repo"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    hidden: bool = False
    text_field: str = "text"
    errors: str = "strict"  # "strict" (skip invalid UTF-8) or "replace"
    tokenizer: Path | None = None  # an existing SentencePiece model, else train one
    vocab_size: int = DEFAULT_VOCAB_SIZE
    sample_bytes: int = DEFAULT_SAMPLE_BYTES
    seed: int = 0
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    holdout: float = DEFAULT_HOLDOUT  # fraction of documents held out of training, by content
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    force: bool = False
    progress: bool = True


@dataclass
class TokenizeResult:
    """What a run did (or found already done)."""

    out: str
    up_to_date: bool
    documents: int
    tokens: int
    bytes: int
    shards: int
    vocab_size: int
    tokenizer_sha256: str
    skipped: dict[str, int]
    seconds: float
    trained_tokenizer: bool = False
    holdout: float = 0.0  # the --holdout fraction
    splits: dict = field(default_factory=dict)  # {"train"|"heldout": {"documents", "tokens"}}
    heldout_fallback: bool = False  # the fraction selected none: the smallest hash was taken
    version: str | None = None  # "versions/000003"; None: a flat directory (written before)
    kept_versions: list[str] = field(default_factory=list)  # older, still open by a reader

    def to_dict(self) -> dict:
        return asdict(self)


def validate_options(options: TokenizeOptions) -> None:
    """Raise InputError naming the option or path that cannot work."""
    if not options.paths:
        raise InputError("give at least one corpus path")
    for path in options.paths:
        if not path.exists():
            raise InputError(f"corpus path does not exist: {path}")
    if options.tokenizer is not None and not options.tokenizer.is_file():
        raise InputError(f"--tokenizer: no such file: {options.tokenizer}")
    if options.group not in ("file", "repo"):
        raise InputError(f"--group must be 'file' or 'repo', got {options.group!r}")
    if options.errors not in ("strict", "replace"):
        raise InputError(f"--errors must be 'strict' or 'replace', got {options.errors!r}")
    if options.vocab_size < MIN_VOCAB_SIZE:
        raise InputError(f"--vocab-size must be at least {MIN_VOCAB_SIZE}")
    if options.shard_tokens < 1 or options.sample_bytes < 1 or options.workers < 1:
        raise InputError("--shard-tokens, --sample-bytes and --workers must be positive")
    if not 0.0 <= options.holdout < 1.0:
        raise InputError(f"--holdout must be a fraction in [0, 1), got {options.holdout}")
    if options.out.exists() and not options.out.is_dir():
        raise InputError(f"--out exists and is not a directory: {options.out}")
    resolved = [path.resolve() for path in options.paths]
    for index, path in enumerate(resolved):
        if path in resolved[:index]:
            raise InputError(f"corpus path given twice: {options.paths[index]}")
        if path == options.out.resolve():
            raise InputError(f"--out {options.out} is a corpus path; write the output elsewhere")


def tokenize_corpus(options: TokenizeOptions) -> TokenizeResult:
    """Run the stage; see the module docstring. Raises InputError for bad usage."""
    validate_options(options)
    started = time.perf_counter()
    options.out.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(options.out):
        tokenizer_bytes = options.tokenizer.read_bytes() if options.tokenizer else None
        scan = _scan(options, tokenizer_bytes)
        current = _current_result(options.out, scan.fingerprint, started)
        kept = versions.clean(options.out)  # failed builds, versions no reader holds
        if current is not None and not options.force:
            current.kept_versions = kept
            return current
        return _build(options, scan, tokenizer_bytes, started)


def _walk(options: TokenizeOptions, on_skip=lambda skip: None, stat=False) -> Iterator[Entry]:
    """The corpus files, freshly walked: the file list is never held in memory (a corpus may
    have millions of files), so each pass lists the directories again. Only the fingerprint's
    pass ``stat``s each file; reading needs no size (an unreadable file is skipped when read):
    one stat per file in a run (with a trained tokenizer, the sample passes open only the files
    they pick)."""
    return walk_corpus(
        options.paths,
        group=options.group,
        include=options.include,
        exclude=options.exclude,
        hidden=options.hidden,
        skip_dirs=(options.out,),  # an output inside the corpus is never read as input
        on_skip=on_skip,
        stat=stat,
    )


@dataclass(frozen=True)
class _Scan:
    """What one walk of the corpus tells before reading it."""

    fingerprint: str
    files: int
    file_bytes: int  # on disk, compressed files not counted (they have no known text size)


def _build(options, scan: _Scan, tokenizer_bytes, started) -> TokenizeResult:
    """Tokenize into a new version directory, then make it the current version of ``out``.
    Until the switch the previous version stays current; a failure removes the new one."""
    out = options.out
    version = versions.new_version(out)
    try:
        manifest, trained = _write_version(options, scan, tokenizer_bytes, version)
        versions.switch(out, version)
    except BaseException:
        if not versions.is_current(out, version):
            shutil.rmtree(version, ignore_errors=True)
        raise
    kept = versions.clean(out)  # links to the new version first, then old versions no one reads
    result = _result(out, manifest, False, started, trained)
    result.version = versions.version_name(out, version)
    result.kept_versions = kept
    return result


def _write_version(options, scan: _Scan, tokenizer_bytes, version: Path) -> tuple[dict, bool]:
    """Write tokenizer.model, the shards, documents.parquet and manifest.json (last) into the
    version directory, each fsynced. Returns (manifest, whether the tokenizer was trained)."""
    from longnet_cli.data.format.manifest import build_manifest
    from longnet_cli.data.format.schema import token_dtype
    from longnet_cli.data.format.writer import DocumentsWriter, ShardWriter, write_manifest
    from longnet_cli.data.tokenizer import tokenizer_from_bytes, train_tokenizer

    trained = tokenizer_bytes is None
    if trained:
        sample = _sample_texts(options, scan, version)
        tokenizer_bytes = train_tokenizer(sample, options.vocab_size, options.seed)
    write_synced(version / TOKENIZER_FILE, tokenizer_bytes)
    processor = tokenizer_from_bytes(tokenizer_bytes)
    if processor.eos_id() < 0:
        raise InputError(f"--tokenizer {options.tokenizer} defines no EOS id; longnet needs one")
    dtype = token_dtype(processor.vocab_size())

    skips = _SkipLog()
    documents = read_documents(
        _walk(options, skips.add),
        text_field=options.text_field,
        errors=options.errors,
        scratch=version,
        on_skip=skips.add,
    )
    table = DocumentsWriter(version / DOCUMENTS_FILE)
    tally = SplitTally(options.holdout)
    total_bytes = 0
    with ShardWriter(version, dtype, options.shard_tokens, processor.eos_id()) as writer:
        bar = _progress(scan.file_bytes, options.progress)
        encoded = _encoded_pieces(documents, processor, options.workers, skips.add)
        for document, ids, first, last in encoded:
            if ids is None:  # it changed while it was read: drop what was written of it
                writer.discard_document()
                continue
            if first:
                writer.begin_document()
            writer.write(ids)
            if last:
                placement = writer.end_document()
                split = tally.add(document.sha256, placement.tokens + 1)  # with its EOS
                table.add(document.source, placement, document.nbytes, document.sha256, split)
                total_bytes += document.nbytes
                bar.update(document.nbytes)
                bar.set_postfix(docs=table.rows, refresh=False)
        bar.close()
        shards = writer.close()
    table.close()
    splits = tally.finish()
    if tally.fallback:  # the fraction selected none: the smallest content hash is held out
        table.hold_out(tally.smallest)
    counts = dict(sorted(skips.counts.items()))
    manifest = build_manifest(
        tokenizer_sha256=sha256_bytes(tokenizer_bytes),
        vocab_size=processor.vocab_size(),
        dtype=dtype,
        eos_id=processor.eos_id(),
        bos_id=processor.bos_id(),
        documents=table.rows,
        text_bytes=total_bytes,
        shards=shards,
        skipped={"counts": counts, "examples": [asdict(s) for s in skips.examples]},
        fingerprint=scan.fingerprint,
        options=_fingerprint_options(options),
        splits=splits,
        documents_sha256=sha256_file(table.path),  # after the fallback's rewrite
    )
    write_manifest(version, manifest, seal=True)  # with manifest_sha256, of its own content
    return manifest, trained


# --------------------------------------------------------------------------- encoding


def _encoded_pieces(documents: Iterator[Document], processor, workers: int, on_skip):
    """(document, token ids, first piece?, last piece?) for every piece, in order.

    Pieces of many documents are encoded together in batches of about BATCH_CHARS characters
    by SentencePiece's own threads (the result does not depend on their number). A streamed
    document that turns out to have changed since it was checked (``DocumentChanged`` at its
    end) is reported as skipped ("changed"); when pieces of it were already handed out, one
    more item ``(document, None, False, True)`` tells the consumer to drop them.
    """
    import numpy as np

    batch: list[tuple[Document, str, bool, bool]] = []
    chars = 0

    def flush():
        encoded = encode_lossless(processor, [item[1] for item in batch], workers)
        for (document, _, first, last), ids in zip(batch, encoded):
            yield document, np.asarray(ids, dtype=np.int64), first, last

    for document in documents:
        pieces = document.pieces()
        begun = len(batch)  # where this document's pieces start in the batch
        handed_out = False  # some of its pieces were flushed already
        try:
            piece, first = next(pieces, None), True
            while piece is not None:
                following = next(pieces, None)
                batch.append((document, piece, first, following is None))
                chars += len(piece)
                if chars >= BATCH_CHARS or len(batch) >= BATCH_PIECES:
                    yield from flush()
                    handed_out = True  # its last piece is never flushed before it is checked
                    batch, chars, begun = [], 0, 0
                piece, first = following, False
        except DocumentChanged as err:
            on_skip(Skip(document.source, "changed", err.detail))
            chars -= sum(len(item[1]) for item in batch[begun:])
            del batch[begun:]
            if handed_out:
                yield document, None, False, True
    if batch:
        yield from flush()


# --------------------------------------------------------------------------- sampling


def _sample_texts(options: TokenizeOptions, scan: _Scan, scratch: Path) -> Iterator[str]:
    """A deterministic sample of about ``sample_bytes`` of text for training the tokenizer.

    First pass: files picked by a hash of (seed, path) with a probability that makes their
    expected size about twice the sample, each giving at most a share, so that neither the
    first files nor one huge book dominate. If that falls short (few, large files), a second
    pass tops it up from every file in order. Memory: one document at a time.
    """
    from dataclasses import replace

    budget = options.sample_bytes
    share = max(1 << 16, budget // 16)
    chance = min(1.0, 2.0 * budget / max(scan.file_bytes, 1))
    taken = 0
    for top_up in (False, True):
        for entry in _walk(options):
            if not top_up and _uniform(options.seed, entry.rel) >= chance:
                continue
            single = [replace(entry, group=None)]
            from_entry = 0
            documents = read_documents(
                single, text_field=options.text_field, errors="replace", scratch=scratch
            )
            for document in documents:
                try:
                    for piece in document.pieces():
                        piece = piece[: max(min(share - from_entry, budget - taken), 0)]
                        if not piece:
                            break
                        yield piece
                        size = len(piece.encode("utf-8", "replace"))
                        from_entry, taken = from_entry + size, taken + size
                except DocumentChanged:
                    pass  # changed while sampled: what was read of it is still text
                if from_entry >= share or taken >= budget:
                    break
            if taken >= budget:
                return
        share = budget  # the top-up pass may take more from each file


def _uniform(seed: int, rel: str) -> float:
    """A number in [0, 1) fixed by (seed, path)."""
    digest = hashlib.sha256(f"{seed}:{rel}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --------------------------------------------------------------------------- bookkeeping


def _exclusive_lock(out: Path):
    """An flock on ``out/.lock``: a second run on the same output refuses at once."""
    from longnet_cli.core.runlock import DirectoryLock

    path = out / LOCK

    def refuse(holder: str) -> LongnetError:
        return LongnetError(
            f"another longnet tokenize is writing {out} (lock {path} is held); wait for it to "
            "finish"
        )

    return DirectoryLock(path, refuse, record_holder=False)  # an unchanged corpus: no write


def _fingerprint_options(options: TokenizeOptions) -> dict:
    """The options that change the output (not workers, force or progress)."""
    return {
        "paths": [str(p.resolve()) for p in options.paths],
        "group": options.group,
        "include": list(options.include),
        "exclude": list(options.exclude),
        "hidden": options.hidden,
        "text_field": options.text_field,
        "errors": options.errors,
        "vocab_size": None if options.tokenizer else options.vocab_size,
        "sample_bytes": None if options.tokenizer else options.sample_bytes,
        "seed": options.seed,
        "shard_tokens": options.shard_tokens,
        "holdout": options.holdout,
    }


def _scan(options: TokenizeOptions, tokenizer: bytes | None) -> _Scan:
    """One walk: the fingerprint (sha256 over the options, the tokenizer and every input
    file's path, size and mtime) and the corpus size."""
    digest = hashlib.sha256(json.dumps(_fingerprint_options(options), sort_keys=True).encode())
    digest.update(hashlib.sha256(tokenizer or b"").digest())
    files = file_bytes = 0
    for e in _walk(options, stat=True):
        line = f"{e.path}\0{e.rel}\0{e.size}\0{e.mtime_ns}\0{e.group}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))  # names are bytes on Linux
        files += 1
        file_bytes += 0 if e.compressed else e.size
    return _Scan(digest.hexdigest(), files, file_bytes)


class _SkipLog:
    """Skipped items: counted by reason, the first SKIP_EXAMPLES kept (bounded memory)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[Skip] = []

    def add(self, skip: Skip) -> None:
        self.counts[skip.reason] += 1
        if len(self.examples) < SKIP_EXAMPLES:
            self.examples.append(skip)


def _current_result(out: Path, fingerprint: str, started: float) -> TokenizeResult | None:
    """The existing output's result when its manifest has this fingerprint and it verifies."""
    from longnet_cli.data.format.errors import CorpusError
    from longnet_cli.data.format.reader import TokenizedCorpus

    if not (out / MANIFEST_FILE).exists():
        return None
    try:
        corpus = TokenizedCorpus.open(out, verify="sizes")
    except CorpusError:
        return None
    corpus.close()  # its reader lock would keep ``clean`` from removing this version later
    if corpus.manifest.get("fingerprint") != fingerprint:
        return None
    result = _result(out, corpus.manifest, True, started, False)
    result.version = corpus.version
    return result


def _result(out, manifest, up_to_date, started, trained) -> TokenizeResult:
    splits = manifest.get("splits", {})
    return TokenizeResult(
        out=str(out),
        up_to_date=up_to_date,
        documents=manifest["documents"],
        tokens=manifest["tokens"],
        bytes=manifest["bytes"],
        shards=len(manifest["shards"]),
        vocab_size=manifest["vocab_size"],
        tokenizer_sha256=manifest["tokenizer_sha256"],
        skipped=manifest["skipped"].get("counts", {}),
        seconds=time.perf_counter() - started,
        trained_tokenizer=trained,
        holdout=float(splits.get("holdout", 0.0)),
        splits={key: dict(splits[key]) for key in ("train", "heldout") if key in splits},
        heldout_fallback=bool(splits.get("fallback", False)),
    )


def _progress(total: int, enabled: bool):
    """A tqdm bar over source bytes on stderr (a no-op object when disabled)."""
    from tqdm import tqdm

    total = total or None
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="tokenize",
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
    )
