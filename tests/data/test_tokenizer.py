"""The trained SentencePiece model: lossless on code and prose, digits split, long inputs reach
the trainer, deterministic training."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import pytest

from longnet_cli.core.errors import InputError
from longnet_cli.core.files import sha256_bytes
from longnet_cli.data.tokenizer import (
    CHARACTER_COVERAGE,
    MAX_SENTENCE_BYTES,
    RESERVED_PIECES,
    TRAIN_PIECE_CHARS,
    character_frequencies,
    characters_at,
    encode_lossless,
    load_tokenizer,
    tokenizer_from_bytes,
    train_tokenizer,
    training_pieces,
)

STDLIB = Path(sysconfig.get_paths()["stdlib"])
STDLIB_FILES = ["json/decoder.py", "textwrap.py", "shlex.py", "csv.py", "string.py", "glob.py"]
VOCAB = 600

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom.\n"
    "  Two leading spaces,\ttabs\tinside, and trailing spaces   \n"
    "Windows line endings\r\nand a lone carriage return\rhere.\n\n\n"
    "Numbers: 3.14159, 2024-06-01, 1000000 and 007.\n"
)
UNICODE = "Ünïcödé café naïve résumé — “quotes” 日本語のテキスト 中文 한국어 🙂🎉👩‍💻 e\u0301\n"


def stdlib_texts() -> list[str]:
    texts = [(STDLIB / name).read_text("utf-8") for name in STDLIB_FILES
             if (STDLIB / name).is_file()]  # fmt: skip
    assert len(texts) >= 3, f"expected Python sources under {STDLIB}"
    return texts


def training_texts() -> list[str]:
    return [*stdlib_texts()[:3], PROSE * 20, UNICODE * 20]


@pytest.fixture(scope="module")
def model() -> bytes:
    return train_tokenizer(training_texts(), VOCAB, seed=0)


@pytest.fixture(scope="module")
def processor(model):
    return tokenizer_from_bytes(model)


def tricky_texts() -> list[str]:
    return [
        "",
        " ",
        "   ",
        "\n",
        "\t\t\tindented with tabs\n",
        "    four spaces\n        eight spaces\n",
        "trailing spaces   ",
        "  leading spaces",
        "multiple   inner    spaces",
        "crlf\r\nline\r\n",
        "\r",
        "digits 0123456789 9876543210 1e10 0x1F",
        UNICODE,
        "never seen in training: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ ᚠᛇᚻ ⅋ \u00a0nbsp \u200bzwsp \ufeffbom",
        "control \x01\x02\x7f\x1b[0m chars",
        "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\n",
        PROSE,
    ]


def test_lossless_on_python_sources(processor):
    for text in stdlib_texts():
        ids = processor.encode(text)
        assert processor.decode(ids) == text


@pytest.mark.parametrize("index", range(len(tricky_texts())))
def test_lossless_on_tricky_text(processor, index):
    text = tricky_texts()[index]
    assert processor.decode(processor.encode(text)) == text


def test_lossless_on_everything_concatenated(processor):
    text = "".join(tricky_texts()) + "".join(stdlib_texts()[3:])
    assert processor.decode(processor.encode(text)) == text


def test_eos_defined_and_never_produced_by_encoding(processor):
    eos = processor.eos_id()
    assert eos >= 0
    assert processor.id_to_piece(eos) not in ("", None)
    ids = processor.encode("".join(tricky_texts()))
    assert eos not in ids
    assert processor.vocab_size() == VOCAB


def test_digits_are_split_one_per_token(processor):
    pieces = processor.encode("In 2024, 1000000 people paid $42.50 for 0987654321.", out_type=str)
    with_digits = [p for p in pieces if any(c.isdigit() for c in p)]
    assert with_digits  # the digits are there
    assert all(len(p) == 1 for p in with_digits), with_digits


def test_no_vocabulary_piece_holds_two_digits():
    # numbers repeated so often that BPE would merge them if digits were not split
    texts = ["12345 67890 2024 1000000 3.14159\n" * 400, "abc def\n" * 100]
    processor = tokenizer_from_bytes(train_tokenizer(texts, 400))
    pieces = [processor.id_to_piece(i) for i in range(processor.vocab_size())
              if not processor.is_byte(i)]  # fmt: skip
    assert not [p for p in pieces if sum(c.isdigit() for c in p) > 1]


def test_no_dummy_prefix_and_whitespace_kept(processor):
    # without a dummy prefix the first piece of "x" is not the space-prefixed "▁x"
    assert processor.encode("x", out_type=str)[0].startswith("x")
    assert processor.decode(processor.encode("a  \n  b")) == "a  \n  b"


def test_training_pieces_bounded_and_cover_each_text_in_order():
    lines = "".join(f"line {i:04d} " + "w" * (i % 90) + "\n" for i in range(400))
    texts = [
        "short\n",
        "x" * 20000,  # one long line
        lines,  # a long document of normal lines
        "",
        "🙂" * 9000,  # 4 bytes per character
        "no newline at the end",
    ]
    per_text = [list(training_pieces([t])) for t in texts]
    for text, pieces in zip(texts, per_text):
        assert "".join(pieces) == text
        assert all(0 < len(p) <= TRAIN_PIECE_CHARS for p in pieces)
        assert all(len(p.encode("utf-8")) <= MAX_SENTENCE_BYTES for p in pieces)
    assert list(training_pieces(texts)) == [p for pieces in per_text for p in pieces]
    # long documents are cut after newlines where there are some
    assert all(p.endswith("\n") for p in per_text[2])
    assert len(per_text[1]) == -(-20000 // TRAIN_PIECE_CHARS)


def test_training_pieces_small_limit():
    assert list(training_pieces(["ab\ncd\nefgh", "ijklmnop"], max_chars=4)) == [
        "ab\n",
        "cd\n",
        "efgh",
        "ijkl",
        "mnop",
    ]


def test_long_lines_reach_the_trainer():
    # one line of ~300 KB, far over SentencePiece's max_sentence_length: a word seen only there
    # must still be learned
    line = "zqxjv " * 50000
    assert "\n" not in line and len(line.encode()) > 16 * MAX_SENTENCE_BYTES
    processor = tokenizer_from_bytes(train_tokenizer([line, "common words here\n" * 10], 400))
    pieces = processor.encode("zqxjv", out_type=str)
    assert pieces == ["zqxjv"]


def test_training_is_deterministic(model):
    assert train_tokenizer(training_texts(), VOCAB, seed=0) == model
    assert train_tokenizer(training_texts(), VOCAB, seed=0) == model


def test_load_from_file_and_bytes_agree(model, tmp_path):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(model)
    from_file, from_bytes = load_tokenizer(path), tokenizer_from_bytes(model)
    text = PROSE + UNICODE
    assert from_file.encode(text) == from_bytes.encode(text)
    assert sha256_bytes(model) == hashlib.sha256(model).hexdigest()


def characters_of(processor) -> list[str]:
    """The single characters the model holds as pieces of their own (bytes and specials out)."""
    return [piece for i in range(processor.vocab_size())
            if not (processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i))
            and len(piece := processor.id_to_piece(i)) == 1]  # fmt: skip


def test_more_characters_than_a_small_vocabulary_holds_fall_back_to_bytes():
    """Code with 600 rare characters (twice each, like the tables in installed packages): at
    the default coverage it needs more characters than 400 ids hold, which SentencePiece
    refused; trained again at a lower coverage, the rare ones are bytes, still lossless."""
    rare = "".join(chr(0x4E00 + i) * 2 for i in range(600))
    texts = [*stdlib_texts(), rare]
    frequencies = character_frequencies(training_pieces(texts))
    assert characters_at(frequencies, CHARACTER_COVERAGE) > 400 - RESERVED_PIECES
    model = train_tokenizer(texts, 400)
    assert train_tokenizer(texts, 400) == model  # deterministic
    processor = tokenizer_from_bytes(model)
    assert processor.vocab_size() == 400
    kept = characters_of(processor)
    assert len(kept) <= (400 - RESERVED_PIECES) // 2 + 2 and "e" in kept and "(" in kept
    probe = [rare[:40], texts[0]]
    for text, ids in zip(probe, encode_lossless(processor, probe)):
        assert processor.decode(ids) == text
    assert len(processor.encode(rare[:40])) == 3 * 40  # each a three-byte fallback


def test_a_vocabulary_too_small_for_the_characters_names_the_size_that_fits():
    texts = ["".join(chr(0x4E00 + i) for i in range(600)) * 3]  # 600 equally common characters
    with pytest.raises(InputError, match="--vocab-size 400 cannot hold") as info:
        train_tokenizer(texts, 400)
    assert info.value.exit_code == 2
    fits = int(str(info.value).rsplit("--vocab-size ", 1)[1].split()[0])
    assert tokenizer_from_bytes(train_tokenizer(texts, fits)).vocab_size() <= fits
