"""Fixtures of the corpus-format tests: small corpora written the way the tokenize stage does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from longnet_cli.data.format.manifest import FORMAT_VERSION
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.format.schema import token_dtype
from longnet_cli.data.format.writer import ShardWriter, write_documents_table, write_manifest


class SmallCorpus:
    """Writes token corpora of given documents: ids in [2, vocab - 2] never clash with EOS."""

    eos = 1
    vocab = 300
    tokenizer_bytes = b"not a real sentencepiece model, only hashed here"

    def random_documents(self, rng: np.random.Generator, shard_tokens: int) -> list[list[int]]:
        """Random ids in [2, VOCAB - 2] (never EOS) with the awkward lengths placed on purpose."""
        lengths = [
            shard_tokens - 1,  # with its EOS it fills shard 0 exactly
            shard_tokens,  # starts at a shard boundary, its EOS spills into the next shard
            0,  # empty
            3 * shard_tokens + 2,  # longer than a shard: spans four
            0,
            0,  # two empty documents in a row
            1,
        ]
        lengths += [int(n) for n in rng.integers(0, 2 * shard_tokens, size=12)]
        return [[int(t) for t in rng.integers(2, self.vocab - 1, size=n)] for n in lengths]

    def write(
        self,
        directory: Path,
        documents: list[list[int]],
        shard_tokens: int,
        vocab_size: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> list:
        """Write a complete corpus directory the way the tokenize stage does; returns placements."""
        vocab_size = vocab_size or self.vocab
        rng = rng or np.random.default_rng(1)
        dtype = token_dtype(vocab_size)
        placements = []
        with ShardWriter(directory, dtype, shard_tokens, self.eos) as writer:
            for doc in documents:
                writer.begin_document()
                # the document arrives in random pieces (empty pieces included)
                cuts = sorted(int(c) for c in rng.integers(0, len(doc) + 1, size=3))
                for low, high in zip([0, *cuts], [*cuts, len(doc)]):
                    writer.write(np.array(doc[low:high], dtype=np.int64))
                placements.append(writer.end_document())
            shards = writer.close()
        texts = [" ".join(map(str, doc)).encode() for doc in documents]
        write_documents_table(
            directory,
            {
                "doc_id": list(range(len(documents))),
                "source": [f"doc{i}.txt" for i in range(len(documents))],
                "shard": [p.shard for p in placements],
                "offset": [p.offset for p in placements],
                "tokens": [p.tokens for p in placements],
                "bytes": [len(text) for text in texts],
                "sha256": [hashlib.sha256(text).hexdigest() for text in texts],
            },
        )
        (directory / "tokenizer.model").write_bytes(self.tokenizer_bytes)
        write_manifest(
            directory,
            {
                "format": FORMAT_VERSION,
                "tokenizer_sha256": hashlib.sha256(self.tokenizer_bytes).hexdigest(),
                "vocab_size": vocab_size,
                "dtype": dtype,
                "eos_id": self.eos,
                "bos_id": -1,
                "documents": len(documents),
                "tokens": sum(len(doc) + 1 for doc in documents),
                "bytes": sum(len(text) for text in texts),
                "shards": shards,
                "skipped": {"counts": {}, "examples": []},
                "fingerprint": "test",
            },
        )
        return placements

    def stream(self, documents: list[list[int]]) -> list[int]:
        """The token stream of ``documents``: each followed by EOS."""
        stream: list[int] = []
        for doc in documents:
            stream += [*doc, self.eos]
        return stream


@pytest.fixture
def small_corpus() -> SmallCorpus:
    return SmallCorpus()


@pytest.fixture
def corpus_dir(tmp_path, small_corpus) -> Path:
    """A sound corpus of 8 documents in shards of 32 tokens."""
    documents = [[int(t) for t in range(2 + i, 30 + 3 * i)] for i in range(8)]
    small_corpus.write(tmp_path, documents, shard_tokens=32)
    assert TokenizedCorpus.open(tmp_path, verify="full").verify(full=True) == []
    return tmp_path
