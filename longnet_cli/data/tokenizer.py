"""Train and load SentencePiece models that tokenize any text, code included, losslessly.

Lossless means ``decode(encode(text)) == text`` for every string: identity normalisation, no
whitespace collapsing, no dummy prefix, and byte fallback for characters outside the vocabulary.
Digits are split one per token. Newlines stay inside training pieces, so the model learns
tokens such as ``"):\\n"`` and runs of indentation.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from longnet_cli.core.errors import InputError

# SentencePiece drops training sentences over max_sentence_length bytes; pieces handed to the
# trainer are cut to at most TRAIN_PIECE_CHARS characters (<= 4 bytes each in UTF-8).
TRAIN_PIECE_CHARS = 4096
MAX_SENTENCE_BYTES = 4 * TRAIN_PIECE_CHARS
# BPE training gives different models for different thread counts: fixed, so that the model
# depends on the corpus and seed only, never on --workers or the machine.
TRAIN_THREADS = 4
UNK_ID, EOS_ID = 0, 1
SPACE_SYMBOL = "\u2581"  # SentencePiece's whitespace symbol, decoded as " "
CHARACTER_COVERAGE = 0.9999
RETRY_CHARACTER_COVERAGE = 0.9995  # where the default needs more characters than fit
MIN_CHARACTER_COVERAGE = 0.98  # the lowest SentencePiece accepts
RESERVED_PIECES = 258  # ids SentencePiece keeps apart from characters: 256 bytes, unk, eos


def train_tokenizer(texts: Iterable[str], vocab_size: int, seed: int = 0) -> bytes:
    """Train a lossless BPE model on ``texts``; returns the serialized model.

    Deterministic for a given sequence of texts, vocabulary size and seed. A sample with more
    distinct characters than a small vocabulary can hold at the default coverage (installed
    packages' source at 2,048: 2,154 of its 5,502 characters) is trained again at coverage
    0.9995 (234 characters there), lower where that still leaves fewer than half of the
    non-reserved ids to merges (never below SentencePiece's floor, 0.98): the rarer characters
    fall back to bytes, still lossless, and the merges they leave pack more text per token
    (2.57 bytes per token on held-out files against 2.36 keeping 895 characters). When even
    the floor needs more characters than the vocabulary holds, InputError names the
    --vocab-size that would.
    """
    pieces = list(training_pieces(texts))
    try:
        return _train(pieces, vocab_size, seed, CHARACTER_COVERAGE)
    except RuntimeError as err:
        if "required_chars" not in str(err):
            raise
    frequencies = character_frequencies(pieces)
    budget = max(1, (vocab_size - RESERVED_PIECES) // 2)
    coverage = max(MIN_CHARACTER_COVERAGE, coverage_of_top(frequencies, budget))
    coverage = min(RETRY_CHARACTER_COVERAGE, coverage)
    try:
        return _train(pieces, vocab_size, seed, coverage)
    except RuntimeError as err:
        if "required_chars" not in str(err):
            raise
    needed = characters_at(frequencies, MIN_CHARACTER_COVERAGE)
    raise InputError(
        f"--vocab-size {vocab_size} cannot hold this corpus's characters: even at coverage "
        f"{MIN_CHARACTER_COVERAGE} the tokenizer needs {needed:,} of them besides "
        f"{RESERVED_PIECES} reserved ids; give --vocab-size {2 * needed + RESERVED_PIECES} or more"
    )


def character_frequencies(pieces: Iterable[str]) -> list[int]:
    """How often each distinct character occurs in ``pieces``, most frequent first."""
    counts: Counter[str] = Counter()
    for piece in pieces:
        counts.update(piece)
    return sorted(counts.values(), reverse=True)


def coverage_of_top(frequencies: list[int], count: int) -> float:
    """The character coverage at which SentencePiece keeps about the ``count`` most frequent
    characters (halfway between the shares of the top ``count - 1`` and ``count``)."""
    total = sum(frequencies) or 1
    below, upto = sum(frequencies[: count - 1]), sum(frequencies[:count])
    return min(CHARACTER_COVERAGE, (below + upto) / 2 / total)


def characters_at(frequencies: list[int], coverage: float) -> int:
    """How many of the most frequent characters SentencePiece keeps at ``coverage``."""
    total, accumulated = sum(frequencies), 0
    for kept, frequency in enumerate(frequencies):
        if accumulated >= coverage * total:
            return kept
        accumulated += frequency
    return len(frequencies)


def _train(pieces: list[str], vocab_size: int, seed: int, coverage: float) -> bytes:
    """One SentencePiece training run on the trainer sentences ``pieces``."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(pieces),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        split_by_whitespace=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        character_coverage=coverage,
        hard_vocab_limit=False,  # a small sample may not support the full vocabulary
        unk_id=UNK_ID,
        eos_id=EOS_ID,
        bos_id=-1,
        pad_id=-1,
        num_threads=TRAIN_THREADS,
        minloglevel=2,
    )
    return model.getvalue()


def training_pieces(texts: Iterable[str], max_chars: int = TRAIN_PIECE_CHARS) -> Iterator[str]:
    """Cut texts into trainer sentences of at most ``max_chars``, preferably after a newline.

    Long lines and long documents would otherwise be skipped by the trainer.
    """
    for text in texts:
        start = 0
        while start < len(text):
            end = min(start + max_chars, len(text))
            if end < len(text):
                newline = text.rfind("\n", start, end)
                if newline > start:
                    end = newline + 1
            yield text[start:end]
            start = end


def encode_lossless(processor, texts: list[str], threads: int = 1) -> list[list[int]]:
    """Token ids of ``texts`` that decode back to exactly the texts.

    SentencePiece decodes its own whitespace symbol U+2581 as a space, so a text holding that
    character is encoded around it, each U+2581 as its three byte-fallback tokens.
    """
    encoded = processor.encode(texts, num_threads=threads)
    for index, text in enumerate(texts):
        if SPACE_SYMBOL in text:
            encoded[index] = _encode_space_symbols(processor, text)
    return encoded


def _encode_space_symbols(processor, text: str) -> list[int]:
    symbol = [processor.piece_to_id(f"<0x{byte:02X}>") for byte in SPACE_SYMBOL.encode()]
    if not all(processor.is_byte(i) for i in symbol):  # a model without byte fallback
        return processor.encode(text)
    ids: list[int] = []
    for index, part in enumerate(text.split(SPACE_SYMBOL)):
        if index:
            ids.extend(symbol)
        ids.extend(processor.encode(part))
    return ids


def load_tokenizer(path: Path | str):
    """A SentencePieceProcessor for the model at ``path``; a file SentencePiece cannot load
    (missing, truncated, not a model: its OSError or RuntimeError) raises DamagedFileError,
    one line naming it."""
    import sentencepiece as spm

    from longnet_cli.core.errors import DamagedFileError, one_line

    try:
        return spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as err:
        raise DamagedFileError(
            f"{path}: cannot load the SentencePiece model: {one_line(err)}"
        ) from None


def tokenizer_from_bytes(model: bytes):
    """A SentencePieceProcessor for a serialized model."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model)
