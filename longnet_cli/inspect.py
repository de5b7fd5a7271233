"""Stage ``inspect``: totals of a tokenized corpus, a full verification, one decoded document.

Every change to a corpus file is found: each shard, tokenizer.model and documents.parquet by
its sha256 in the manifest, the manifest by its own ``manifest_sha256``: the checks live in
``data/format/verify.py``; this stage runs them, decodes a document and returns the report. A
corpus written before the last two were recorded is inspected as far as it can be, with a note
naming what cannot be verified (not a problem). A manifest.json that does not parse or check
cannot be inspected at all: CorruptCorpusError, exit 1, one line naming it and the key; a path
that is no corpus: CorpusError, exit 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from longnet_cli.core.errors import InputError
from longnet_cli.data.format.errors import CorpusError
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.verify import inspect_checks


@dataclass
class InspectReport:
    """What ``longnet inspect`` shows: totals from the manifest and every problem found."""

    directory: Path
    documents: int
    tokens: int  # EOS included
    bytes: int  # UTF-8 bytes of the source documents
    shards: int
    vocab_size: int
    dtype: str
    tokenizer_sha256: str
    skipped: dict[str, int] = field(default_factory=dict)
    # {"holdout": f, "train": {"documents", "tokens"}, "heldout": {...}}; None: not recorded
    # (a corpus tokenized before held-out splits existed: every document is train)
    splits: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be verified, and why
    version: str | None = None  # "versions/000003": the current version, inspected; None: flat
    doc_id: int | None = None
    text: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bytes_per_token(self) -> float:
        """Source bytes per text token (EOS not counted): the tokenizer's compression."""
        text_tokens = self.tokens - self.documents
        return self.bytes / text_tokens if text_tokens > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        report = asdict(self)
        report["directory"] = str(self.directory)
        report["bytes_per_token"] = self.bytes_per_token
        report["ok"] = self.ok
        return report


def inspect_corpus(directory: Path, doc_id: int | None = None) -> InspectReport:
    """Read the manifest, verify everything (hashes, ids, documents table), decode ``doc_id``.
    Of a versioned directory, the current version (the one ``manifest.json`` points to).

    A missing directory or manifest raises CorpusError (exit 2), a damaged manifest
    CorruptCorpusError (exit 1); ``doc_id`` out of range, InputError. Problems inside the corpus
    do not raise: they are listed in the report, files that cannot be verified in its notes.
    """
    directory = Path(directory)
    corpus = TokenizedCorpus.open(directory, verify="none")
    manifest = corpus.manifest
    skipped = manifest["skipped"].get("counts", {})
    report = InspectReport(
        directory=directory,
        documents=corpus.num_documents,
        tokens=int(manifest["tokens"]),
        bytes=int(manifest["bytes"]),
        shards=len(manifest["shards"]),
        vocab_size=corpus.vocab_size,
        dtype=manifest["dtype"],
        tokenizer_sha256=manifest["tokenizer_sha256"],
        skipped=dict(skipped) if isinstance(skipped, dict) else {},
        splits=manifest.get("splits"),  # checked by parse_manifest when present
        version=corpus.version,
        doc_id=doc_id,
    )
    if doc_id is not None and not 0 <= doc_id < corpus.num_documents:
        valid = f"0..{corpus.num_documents - 1}" if corpus.num_documents else "none (it is empty)"
        raise InputError(f"--doc {doc_id} is out of range: documents of {directory} are {valid}")
    found = inspect_checks(corpus)
    report.problems, report.notes = found.problems, found.notes
    if doc_id is not None:
        report.text = _decode(corpus, doc_id, report.problems)
    return report


def _decode(corpus: TokenizedCorpus, doc_id: int, problems: list[str]) -> str | None:
    """The text of one document; a failure is added to ``problems`` instead of raised."""
    try:
        ids = corpus.document(doc_id)
    except (CorpusError, IndexError) as err:
        problems.append(f"{corpus.directory}: document {doc_id} cannot be read: {err}")
        return None
    bad = ids[ids >= corpus.vocab_size]
    if bad.size:
        problems.append(
            f"{corpus.directory}: document {doc_id} holds token id {int(bad[0])} >= vocab_size "
            f"{corpus.vocab_size}; not decoded"
        )
        return None
    try:
        processor = corpus.load_tokenizer()
    except CorpusError as err:
        if not any(str(corpus.tokenizer_path) in problem for problem in problems):
            problems.append(str(err))
        return None
    return processor.decode(ids.tolist())
