"""Corpus walking and reading: order, filters, symlinks, bad input, formats, repos, pieces.

Every expected value is built here from what the test wrote to disk, never from the code
under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longnet_cli.data import sources
from longnet_cli.data.sources import SKIP_REASONS, read_documents, split_pieces, walk_corpus

# a GPU machine's image may lack zstandard: skip this module there, not a collection error
zstandard = pytest.importorskip("zstandard")


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def walk(paths, **options) -> tuple[list[str], list[tuple[str, str]]]:
    """(relative paths walked, [(source, reason) skipped])."""
    skips = []
    rels = [e.rel for e in walk_corpus([Path(p) for p in paths], on_skip=skips.append, **options)]
    return rels, [(s.source, s.reason) for s in skips]


def read(paths, *, group="file", errors="strict", text_field="text", **walk_options):
    """([(source, full text)], [(source, reason)]) of the documents of ``paths``."""
    skips = []
    entries = walk_corpus(
        [Path(p) for p in paths], group=group, on_skip=skips.append, **walk_options
    )
    documents = read_documents(entries, text_field=text_field, errors=errors, on_skip=skips.append)
    texts = [(d.source, "".join(d.pieces())) for d in documents]
    return texts, [(s.source, s.reason) for s in skips]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- walking


def test_walk_is_sorted_depth_first_and_deterministic(tmp_path):
    # created in a scrambled order; names sort by code point within each directory
    for rel in ["b.txt", "a/z.txt", "a.txt", "a/b/c.txt", "C.txt", "a/B.txt"]:
        write(tmp_path / rel, rel)
    expected = ["C.txt", "a/B.txt", "a/b/c.txt", "a/z.txt", "a.txt", "b.txt"]
    assert walk([tmp_path]) == (expected, [])
    assert walk([tmp_path]) == (expected, [])


def test_walk_several_inputs_in_the_given_order_and_single_files(tmp_path):
    write(tmp_path / "one" / "x.txt", "x")
    write(tmp_path / "two" / "y.txt", "y")
    single = write(tmp_path / "single.md", "s")
    rels, _ = walk([tmp_path / "two", single, tmp_path / "one"])
    assert rels == ["y.txt", "single.md", "x.txt"]


def test_entry_kinds_from_names(tmp_path):
    names = {
        "a.txt": ("text", False),
        "b.jsonl": ("jsonl", False),
        "c.JSONL.zst": ("jsonl", True),
        "d.parquet": ("parquet", False),
        "e.parquet.zst": ("parquet", True),
        "f.md.zst": ("text", True),
        "g.bin": ("text", False),
    }
    for name in names:
        write(tmp_path / name, "x")
    entries = list(walk_corpus([tmp_path]))
    assert {e.rel: (e.kind, e.compressed) for e in entries} == names
    for entry in entries:
        assert entry.size == 1
        assert entry.path == tmp_path / entry.rel


def test_include_and_exclude_by_name_and_by_path(tmp_path):
    for rel in ["a.py", "b.txt", "src/c.py", "src/d.txt", "docs/e.md", "docs/f.py", "build/g.py"]:
        write(tmp_path / rel, rel)
    assert walk([tmp_path], include=["*.py"])[0] == ["a.py", "build/g.py", "docs/f.py", "src/c.py"]
    assert walk([tmp_path], include=["src/*"])[0] == ["src/c.py", "src/d.txt"]
    # a name pattern excludes a directory anywhere; a path pattern only that path
    assert walk([tmp_path], exclude=["build", "docs/*.py", "*.txt"])[0] == [
        "a.py",
        "docs/e.md",
        "src/c.py",
    ]
    assert walk([tmp_path], include=["*.py"], exclude=["src"])[0] == [
        "a.py",
        "build/g.py",
        "docs/f.py",
    ]


def test_hidden_and_vcs_directories_are_skipped(tmp_path):
    for rel in [
        "ok.txt",
        ".hidden/secret.txt",
        ".git/config",
        "sub/.git/HEAD",
        "sub/.hg/store",
        "sub/.svn/entries",
        "sub/code.py",
    ]:
        write(tmp_path / rel, rel)
    assert walk([tmp_path]) == (["ok.txt", "sub/code.py"], [])
    # hidden=True walks hidden directories, never VCS folders
    assert walk([tmp_path], hidden=True) == ([".hidden/secret.txt", "ok.txt", "sub/code.py"], [])


def test_symlink_loop_is_reported_and_never_followed_twice(tmp_path):
    write(tmp_path / "top.txt", "top")
    write(tmp_path / "a" / "f.txt", "f")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # an ancestor: a cycle
    os.symlink("..", tmp_path / "a" / "up")  # the same, relative
    rels, skips = walk([tmp_path])
    assert rels == ["a/f.txt", "top.txt"]
    assert sorted(reason for _, reason in skips) == ["symlink-loop", "symlink-loop"]
    assert sorted(source.rstrip("/") for source, _ in skips) == ["a/loop", "a/up"]


def test_self_referencing_symlink_is_a_loop(tmp_path):
    write(tmp_path / "ok.txt", "ok")
    os.symlink("self", tmp_path / "self")
    assert walk([tmp_path]) == (["ok.txt"], [("self", "symlink-loop")])


def test_symlinked_directory_is_walked_once(tmp_path):
    write(tmp_path / "real" / "x.txt", "x")
    os.symlink(tmp_path / "real", tmp_path / "z-link")
    rels, _ = walk([tmp_path])
    assert [rel.rsplit("/", 1)[-1] for rel in rels] == ["x.txt"]


def test_broken_symlink_is_unreadable(tmp_path):
    write(tmp_path / "ok.txt", "ok")
    os.symlink(tmp_path / "missing.txt", tmp_path / "broken.txt")
    assert walk([tmp_path]) == (["ok.txt"], [("broken.txt", "unreadable")])
    texts, skips = read([tmp_path])
    assert texts == [("ok.txt", "ok")]
    assert skips == [("broken.txt", "unreadable")]


@pytest.mark.parametrize("group", ["file", "repo"])
def test_a_walk_without_stat_reads_and_skips_the_same(tmp_path, group):
    """walk_corpus(stat=False) (what tokenize's reading passes use) makes no stat per file;
    broken links, link loops and empty files are then reported when read, with the same
    reasons, and the documents are the same."""
    write(tmp_path / "a.txt", "alpha\n")
    write(tmp_path / "empty.txt", "")
    write(tmp_path / "r" / "x.py", "x = 1\n")
    write(tmp_path / "r" / "empty.py", "")
    write(tmp_path / "r" / "s" / "y.py", "y = 2")
    os.symlink(tmp_path / "r" / "x.py", tmp_path / "r" / "z-link.py")
    os.symlink("missing.txt", tmp_path / "broken.txt")
    os.symlink("self.txt", tmp_path / "self.txt")
    os.symlink("missing.parquet", tmp_path / "table.parquet")
    os.symlink("missing.py", tmp_path / "r" / "broken.py")
    texts, skips = read([tmp_path], group=group)
    unstatted_texts, unstatted_skips = read([tmp_path], group=group, stat=False)
    assert unstatted_texts == texts and sorted(unstatted_skips) == sorted(skips)
    assert sorted(skips) == sorted(
        [("broken.txt", "unreadable"), ("empty.txt", "empty"), ("r/broken.py", "unreadable"),
         ("r/empty.py", "empty"), ("self.txt", "symlink-loop"), ("table.parquet", "unreadable")]
    )  # fmt: skip
    assert len(texts) == (2 if group == "repo" else 4)
    entries = list(walk_corpus([tmp_path], stat=False))
    assert {(e.size, e.mtime_ns) for e in entries if not e.path.is_symlink()} == {(-1, -1)}


def test_a_directory_listing_costs_a_string_per_entry(tmp_path):
    """One directory of 5,000 files: the walk holds its sorted listing as one tagged string
    per name: 116 bytes an entry at the peak (a list of os.DirEntry: 240)."""
    import tracemalloc

    count = 5_000
    for i in range(count):
        os.close(os.open(tmp_path / f"file-{i:06d}.txt", os.O_WRONLY | os.O_CREAT))
    tracemalloc.start()
    try:
        walked, previous = 0, ""
        for entry in walk_corpus([tmp_path], stat=False):
            assert entry.rel > previous  # sorted
            walked, previous = walked + 1, entry.rel
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert walked == count
    assert peak / count < 160, f"{peak / count:.0f} bytes an entry"  # measured: 116


def test_skip_reasons_are_the_documented_ones():
    assert set(SKIP_REASONS) >= {
        "binary",
        "invalid-utf8",
        "empty",
        "corrupt-zstd",
        "malformed-jsonl",
        "unreadable",
        "symlink-loop",
        "bad-parquet",
    }


# --------------------------------------------------------------------------- text files


def test_binary_is_detected_by_content_not_by_name(tmp_path):
    write(tmp_path / "data.txt", b"looks like text\x00\x01\x02 but is not")
    write(tmp_path / "notes.bin", "plain text in a .bin file\n")
    texts, skips = read([tmp_path])
    assert texts == [("notes.bin", "plain text in a .bin file\n")]
    assert skips == [("data.txt", "binary")]


def test_binary_late_in_a_file_rejects_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BLOCK", 16)
    write(tmp_path / "late.txt", "x" * 1000 + "\x00" + "y" * 10)
    write(tmp_path / "ok.txt", "fine")
    texts, skips = read([tmp_path])
    assert texts == [("ok.txt", "fine")]
    assert skips == [("late.txt", "binary")]


def test_invalid_utf8_skipped_by_default_and_replaced_on_request(tmp_path):
    raw = "café au lait\n".encode("latin-1") + b"and more\n"
    write(tmp_path / "latin1.txt", raw)
    write(tmp_path / "cut.txt", "ends inside 語".encode()[:-1])
    write(tmp_path / "ok.txt", "ok\n")
    texts, skips = read([tmp_path])
    assert texts == [("ok.txt", "ok\n")]
    assert sorted(skips) == [("cut.txt", "invalid-utf8"), ("latin1.txt", "invalid-utf8")]

    texts, skips = read([tmp_path], errors="replace")
    assert skips == []
    assert dict(texts) == {
        "cut.txt": "ends inside 語".encode()[:-1].decode("utf-8", "replace"),
        "latin1.txt": raw.decode("utf-8", "replace"),
        "ok.txt": "ok\n",
    }
    assert "\ufffd" in dict(texts)["latin1.txt"]


def test_multibyte_characters_across_read_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BLOCK", 3)
    text = "日本語テキスト 🙂 é\r\n\ttabbed  \n" * 7
    write(tmp_path / "u.txt", text)
    (document,) = read_documents(walk_corpus([tmp_path]))
    assert document.text == text
    assert document.nbytes == len(text.encode())
    assert document.sha256 == sha256(text)


def test_empty_files_are_skipped(tmp_path):
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "empty.txt.zst", zstandard.ZstdCompressor().compress(b""))
    write(tmp_path / "space.txt", " ")
    texts, skips = read([tmp_path])
    assert texts == [("space.txt", " ")]
    assert sorted(skips) == [("empty.txt", "empty"), ("empty.txt.zst", "empty")]


def test_small_document_fields(tmp_path):
    text = "line one\nline two  \n\n"
    write(tmp_path / "doc.md", text)
    (document,) = read_documents(walk_corpus([tmp_path]))
    assert document.source == "doc.md"
    assert document.text == text
    assert document.nbytes == len(text.encode())
    assert document.sha256 == sha256(text)


def test_large_document_is_streamed_not_held(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_INLINE_BYTES", 1000)
    monkeypatch.setattr(sources, "READ_BLOCK", 64)
    lines = [f"{i:05d} ünïcode 日本 🙂 {'x' * (i % 50)}\n" for i in range(3000)]
    text = "".join(lines)
    write(tmp_path / "big.txt", text)
    write(tmp_path / "small.txt", "small\n")
    big, small = read_documents(walk_corpus([tmp_path]))
    assert big.source == "big.txt"
    assert big.text is None and big.stream is not None
    data = text.encode("utf-8")
    assert big.nbytes == len(data)
    assert big.sha256 == hashlib.sha256(data).hexdigest()
    pieces = list(big.pieces())
    assert len(pieces) > 1
    assert "".join(pieces) == text
    assert "".join(big.pieces()) == text  # the stream can be read again
    assert small.text == "small\n"


# --------------------------------------------------------------------------- jsonl


JSONL_LINES = [
    json.dumps({"text": "first record", "id": 1}),
    "",
    json.dumps({"text": "second\nrecord\twith  spaces ", "meta": {"a": 1}}),
    '{"text": "broken',
    json.dumps({"other": "no text field"}),
    json.dumps({"text": ""}),
    json.dumps(["not", "an", "object"]),
    json.dumps({"text": 42}),
    json.dumps({"text": "ünïcode 日本 🙂"}, ensure_ascii=False),
    json.dumps({"text": "last, no newline after it"}),
]


def test_jsonl_one_document_per_record_malformed_lines_skipped_alone(tmp_path):
    write(tmp_path / "c.jsonl", "\n".join(JSONL_LINES))
    texts, skips = read([tmp_path])
    assert texts == [
        ("c.jsonl:1", "first record"),
        ("c.jsonl:3", "second\nrecord\twith  spaces "),
        ("c.jsonl:9", "ünïcode 日本 🙂"),
        ("c.jsonl:10", "last, no newline after it"),
    ]
    assert sorted(skips) == [
        ("c.jsonl:4", "malformed-jsonl"),
        ("c.jsonl:5", "malformed-jsonl"),
        ("c.jsonl:6", "empty"),
        ("c.jsonl:7", "malformed-jsonl"),
        ("c.jsonl:8", "malformed-jsonl"),
    ]


def test_jsonl_documents_hash_their_text(tmp_path):
    write(tmp_path / "c.jsonl", json.dumps({"text": "héllo"}) + "\r\n")
    (document,) = read_documents(walk_corpus([tmp_path]))
    assert document.text == "héllo"
    assert document.nbytes == len("héllo".encode())
    assert document.sha256 == sha256("héllo")


def test_jsonl_custom_text_field(tmp_path):
    records = [{"content": "a", "text": "not this"}, {"content": "b"}, {"text": "no content"}]
    write(tmp_path / "r.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    texts, skips = read([tmp_path], text_field="content")
    assert texts == [("r.jsonl:1", "a"), ("r.jsonl:2", "b")]
    assert skips == [("r.jsonl:3", "malformed-jsonl")]


def test_jsonl_invalid_utf8_line(tmp_path):
    bad = b'{"text": "caf\xe9"}'
    write(tmp_path / "r.jsonl", b'{"text": "good"}\n' + bad + b"\n" + b'{"text": "also good"}\n')
    texts, skips = read([tmp_path])
    assert texts == [("r.jsonl:1", "good"), ("r.jsonl:3", "also good")]
    assert skips == [("r.jsonl:2", "invalid-utf8")]
    texts, skips = read([tmp_path], errors="replace")
    assert texts[1] == ("r.jsonl:2", "caf\ufffd")
    assert skips == []


def test_jsonl_lone_surrogate_escape(tmp_path):
    write(tmp_path / "r.jsonl", '{"text": "a\\ud800b"}\n{"text": "pair \\ud83d\\ude42"}\n')
    texts, skips = read([tmp_path])
    assert texts == [("r.jsonl:2", "pair 🙂")]
    assert skips == [("r.jsonl:1", "invalid-utf8")]
    texts, skips = read([tmp_path], errors="replace")
    assert texts == [("r.jsonl:1", "a\ufffdb"), ("r.jsonl:2", "pair 🙂")]


def test_jsonl_binary_line(tmp_path):
    write(tmp_path / "r.jsonl", b'{"text": "ok"}\n\x00\x01\x02\n{"text": "ok2"}\n')
    texts, skips = read([tmp_path])
    assert texts == [("r.jsonl:1", "ok"), ("r.jsonl:3", "ok2")]
    assert skips == [("r.jsonl:2", "binary")]


# --------------------------------------------------------------------------- parquet


def write_parquet(path: Path, columns: dict, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, **options)
    return path


def test_parquet_text_column(tmp_path):
    rows = ["first row", "second\nrow  ", None, "", "ünïcode 🙂"]
    write_parquet(tmp_path / "t.parquet", {"id": list(range(5)), "text": rows})
    texts, skips = read([tmp_path])
    assert texts == [("t.parquet#0", "first row"), ("t.parquet#1", "second\nrow  "),
                     ("t.parquet#4", "ünïcode 🙂")]  # fmt: skip
    assert sorted(skips) == [("t.parquet#2", "empty"), ("t.parquet#3", "empty")]


def test_parquet_custom_column_and_missing_column(tmp_path):
    write_parquet(tmp_path / "t.parquet", {"body": ["x", "y"], "text": ["not", "these"]})
    texts, skips = read([tmp_path], text_field="body")
    assert texts == [("t.parquet#0", "x"), ("t.parquet#1", "y")]
    assert skips == []
    texts, skips = read([tmp_path], text_field="content")
    assert texts == []
    assert skips == [("t.parquet", "bad-parquet")]


def test_parquet_non_string_column_and_garbage_file(tmp_path):
    write_parquet(tmp_path / "ints.parquet", {"text": [1, 2]})
    write(tmp_path / "junk.parquet", b"this is not a parquet file at all")
    write(tmp_path / "ok.txt", "ok")
    texts, skips = read([tmp_path])
    assert texts == [("ok.txt", "ok")]
    assert {reason for _, reason in skips} == {"bad-parquet"}
    assert {source.split("#")[0] for source, _ in skips} == {"ints.parquet", "junk.parquet"}


def test_parquet_many_rows_in_batches(tmp_path):
    rows = [f"row {i} " + "z" * (i % 7) for i in range(5000)]
    write_parquet(tmp_path / "big.parquet", {"text": rows}, row_group_size=777)
    texts, skips = read([tmp_path])
    assert skips == []
    assert texts == [(f"big.parquet#{i}", row) for i, row in enumerate(rows)]


def test_compressed_parquet(tmp_path):
    plain = write_parquet(tmp_path / "tmp" / "t.parquet", {"text": ["a", "b"]})
    compressed = zstandard.ZstdCompressor().compress(plain.read_bytes())
    write(tmp_path / "in" / "t.parquet.zst", compressed)
    texts, skips = read([tmp_path / "in"])
    assert texts == [("t.parquet.zst#0", "a"), ("t.parquet.zst#1", "b")]
    assert skips == []


# --------------------------------------------------------------------------- zstandard


def test_zstd_text_and_jsonl_round_trip(tmp_path):
    text = "compressed text\n" * 500 + "ünïcode 🙂\n"
    records = [{"text": f"record {i}\n"} for i in range(50)]
    jsonl = "".join(json.dumps(r) + "\n" for r in records)
    compressor = zstandard.ZstdCompressor(level=3)
    write(tmp_path / "a.txt.zst", compressor.compress(text.encode()))
    write(tmp_path / "b.jsonl.zst", compressor.compress(jsonl.encode()))
    texts, skips = read([tmp_path])
    assert skips == []
    assert texts == [("a.txt.zst", text)] + [
        (f"b.jsonl.zst:{i + 1}", r["text"]) for i, r in enumerate(records)
    ]


def test_zstd_streamed_in_small_blocks_and_several_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BLOCK", 7)
    first, second = "first frame 日本\n" * 40, "second frame 🙂\n" * 40
    compressor = zstandard.ZstdCompressor()
    data = compressor.compress(first.encode()) + compressor.compress(second.encode())
    write(tmp_path / "two.txt.zst", data)
    # a frame without a content size (written by a streaming compressor)
    chunker = compressor.compressobj()
    streamed = chunker.compress(first.encode()) + chunker.flush()
    write(tmp_path / "streamed.md.zst", streamed)
    texts, skips = read([tmp_path])
    assert skips == []
    assert texts == [("streamed.md.zst", first), ("two.txt.zst", first + second)]


def test_truncated_and_corrupt_zstd(tmp_path):
    text = "".join(f"line {i} of some text that compresses\n" for i in range(3000))
    compressed = zstandard.ZstdCompressor(write_checksum=True).compress(text.encode())
    write(tmp_path / "truncated.txt.zst", compressed[: len(compressed) // 2])
    flipped = bytearray(compressed)
    flipped[len(flipped) // 2] ^= 0xFF
    write(tmp_path / "flipped.txt.zst", bytes(flipped))
    write(tmp_path / "garbage.txt.zst", b"this was never compressed\n" * 10)
    jsonl = "".join(json.dumps({"text": f"r{i}"}) + "\n" for i in range(2000)).encode()
    write(tmp_path / "records.jsonl.zst", zstandard.ZstdCompressor().compress(jsonl)[:-20])
    write(tmp_path / "ok.txt.zst", zstandard.ZstdCompressor().compress(b"fine\n"))
    texts, skips = read([tmp_path])
    assert [(s, t) for s, t in texts if not s.startswith("records")] == [("ok.txt.zst", "fine\n")]
    assert sorted(skips) == [
        ("flipped.txt.zst", "corrupt-zstd"),
        ("garbage.txt.zst", "corrupt-zstd"),
        ("records.jsonl.zst", "corrupt-zstd"),
        ("truncated.txt.zst", "corrupt-zstd"),
    ]
    # records before the truncation may be used; never a partial one
    for source, record in texts:
        if source.startswith("records"):
            number = int(source.split(":")[1])
            assert record == f"r{number - 1}"


# --------------------------------------------------------------------------- repositories


def test_group_repo_one_document_per_subdirectory(tmp_path):
    files = {
        "README.md": "top-level readme\n",
        "repoA/b.py": "def b():\n    return 2",  # no final newline
        "repoA/a.txt": "alpha\n",
        "repoA/src/m.py": "import os\n",
        "repoA/img.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "repoA/empty.txt": b"",
        "repoA/.git/config": "[core]\n",
        "repoB/only.txt": "only file\n",
        "repoC/blob.dat": b"\x00\x01",
        "z.txt": "last top-level file\n",
    }
    for rel, content in files.items():
        write(tmp_path / rel, content)
    texts, skips = read([tmp_path], group="repo")
    repo_a = (
        "==> a.txt <==\nalpha\n==> b.py <==\ndef b():\n    return 2\n==> src/m.py <==\nimport os\n"
    )
    assert texts == [
        ("README.md", "top-level readme\n"),
        ("repoA", repo_a),
        ("repoB", "==> only.txt <==\nonly file\n"),
        ("z.txt", "last top-level file\n"),
    ]
    assert sorted(skips) == [
        ("repoA/empty.txt", "empty"),
        ("repoA/img.png", "binary"),
        ("repoC/blob.dat", "binary"),
    ]


def test_group_repo_document_fields_and_streaming(tmp_path, monkeypatch):
    write(tmp_path / "repo" / "a.txt", "a" * 3000 + "\n")
    write(tmp_path / "repo" / "bad.txt", "x" * 2000 + "\x00")
    write(tmp_path / "repo" / "c.txt", "日本 " * 500)
    expected = "==> a.txt <==\n" + "a" * 3000 + "\n" + "==> c.txt <==\n" + "日本 " * 500 + "\n"
    for limit in (1 << 30, 1000):  # held inline, then streamed
        monkeypatch.setattr(sources, "MAX_INLINE_BYTES", limit)
        skips = []
        (document,) = read_documents(walk_corpus([tmp_path], group="repo"), on_skip=skips.append)
        assert (document.text is None) == (limit == 1000)
        assert document.source == "repo"
        assert "".join(document.pieces()) == expected
        assert document.nbytes == len(expected.encode())
        assert document.sha256 == sha256(expected)
        assert [(s.source, s.reason) for s in skips] == [("repo/bad.txt", "binary")]


def test_group_file_keeps_every_file_separate(tmp_path):
    write(tmp_path / "repo" / "a.txt", "a")
    write(tmp_path / "repo" / "b.txt", "b")
    texts, _ = read([tmp_path])
    assert texts == [("repo/a.txt", "a"), ("repo/b.txt", "b")]


# --------------------------------------------------------------------------- pieces


def reference_pieces(text: str, target: int, limit: int) -> list[str]:
    """The documented rule on the whole text: a piece ends at the first newline at or after
    ``target`` characters (within ``limit``), else after ``limit`` characters."""
    pieces, start = [], 0
    while len(text) - start > 0:
        if len(text) - start < target:
            pieces.append(text[start:])
            break
        end = None
        for i in range(start + target - 1, min(start + limit, len(text))):
            if text[i] == "\n":
                end = i + 1
                break
        if end is None:
            end = start + limit if len(text) - start >= limit else len(text)
        pieces.append(text[start:end])
        start = end
    return pieces


def random_text(rng: random.Random, size: int) -> str:
    alphabet = "abc xyz\t日🙂\r" + "\n" * 3
    out, n = [], 0
    while n < size:
        if rng.random() < 0.05:  # a long line without newlines
            chunk = "L" * rng.randrange(20, 90)
        else:
            chunk = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))
        out.append(chunk)
        n += len(chunk)
    return "".join(out)


def random_blocks(rng: random.Random, text: str) -> list[str]:
    blocks, start = [], 0
    while start < len(text):
        size = rng.choice([0, 1, 1, 2, 5, 17, 40, 200])
        blocks.append(text[start : start + size])
        start += size
    return blocks


@pytest.mark.parametrize("seed", range(5))
def test_split_pieces_independent_of_blocking(seed):
    rng = random.Random(seed)
    text = random_text(rng, 3000)
    target, limit = 16, 50
    expected = reference_pieces(text, target, limit)
    assert "".join(expected) == text
    whole = list(split_pieces([text], target, limit))
    assert whole == expected
    for _ in range(5):
        blocks = random_blocks(rng, text)
        assert "".join(blocks) == text
        assert list(split_pieces(blocks, target, limit)) == expected
    assert list(split_pieces(list(text), target, limit)) == expected  # one character at a time
    assert all(0 < len(piece) <= limit for piece in whole)


def test_split_pieces_default_sizes():
    line = "x" * 99 + "\n"
    text = line * 3000 + "y" * (sources.MAX_PIECE_CHARS + 10)  # a long final line
    pieces = list(split_pieces([text[i : i + 4097] for i in range(0, len(text), 4097)]))
    assert "".join(pieces) == text
    assert all(len(piece) <= sources.MAX_PIECE_CHARS for piece in pieces)
    newline_pieces = [p for p in pieces if "y" not in p]
    assert all(p.endswith("\n") and len(p) >= sources.PIECE_CHARS for p in newline_pieces[:-1])
    assert len(pieces[-2]) == sources.MAX_PIECE_CHARS or pieces[-2].endswith("\n")


def test_split_pieces_edge_cases():
    assert list(split_pieces([])) == []
    assert list(split_pieces(["", ""])) == []
    assert list(split_pieces(["short"])) == ["short"]
    assert list(split_pieces(["ab\ncd\nef"], target=2, limit=10)) == ["ab\n", "cd\n", "ef"]
    assert list(split_pieces(["abcdefgh"], target=2, limit=3)) == ["abc", "def", "gh"]


# --------------------------------------------------------------------------- issue 12: faults


def bytes_path(directory: Path, name: bytes) -> Path:
    """A path whose last component is the raw bytes ``name`` (maybe not valid UTF-8)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(directory), name)))


def test_source_name_escapes_undecodable_bytes_and_backslashes_losslessly():
    for raw in [
        b"plain.txt",
        b"caf\xe9.txt",
        b"\xff\xfe",
        b"a\\xff.txt",
        b"back\\\\slash",
        "日本".encode(),
    ]:
        name = sources.source_name(os.fsdecode(raw))
        name.encode("utf-8")  # always valid text
        assert sources.source_name_bytes(name) == raw
    assert sources.source_name(os.fsdecode(b"caf\xe9.txt")) == "caf\\xe9.txt"
    assert sources.source_name("a\\b") == "a\\\\b"
    assert sources.source_name("plain/日本.txt") == "plain/日本.txt"


def test_file_names_that_are_not_utf8_are_read_with_escaped_sources(tmp_path):
    write(bytes_path(tmp_path, b"caf\xe9.txt"), "latin-1 name\n")
    write(bytes_path(tmp_path, b"ok.txt"), "fine\n")
    repo = bytes_path(tmp_path / "repos", b"r\xff")
    write(repo / "main.py", "x = 1\n")
    write(bytes_path(repo, b"m\xe9.py"), "y = 2\n")
    write(bytes_path(tmp_path / "repos", b"empty\xfe.txt"), b"")
    texts, skips = read([tmp_path])
    assert texts == [
        ("caf\\xe9.txt", "latin-1 name\n"),
        ("ok.txt", "fine\n"),
        ("repos/r\\xff/main.py", "x = 1\n"),
        ("repos/r\\xff/m\\xe9.py", "y = 2\n"),
    ]
    assert skips == [("repos/empty\\xfe.txt", "empty")]
    texts, skips = read([tmp_path / "repos"], group="repo")
    assert texts == [("r\\xff", "==> main.py <==\nx = 1\n==> m\\xe9.py <==\ny = 2\n")]
    assert sources.source_name_bytes(texts[0][0]) == b"r\xff"


def test_streamed_document_that_changes_or_vanishes_between_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_INLINE_BYTES", 1000)
    text = "".join(f"line {i}\n" for i in range(500))
    path = write(tmp_path / "in" / "big.txt", text)
    (document,) = read_documents(walk_corpus([tmp_path / "in"]))
    assert document.text is None
    assert "".join(document.pieces()) == text  # unchanged: read twice, same hash
    path.write_text(text.replace("line 499", "LINE 499"))  # same size, other content
    with pytest.raises(sources.DocumentChanged, match=r"big\.txt"):
        "".join(document.pieces())
    path.write_text(text + "more\n")
    with pytest.raises(sources.DocumentChanged):
        list(document.pieces())
    path.unlink()
    with pytest.raises(sources.DocumentChanged, match="unreadable"):
        list(document.pieces())


def test_streamed_repository_that_changes_between_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_INLINE_BYTES", 1000)
    write(tmp_path / "r" / "a.py", "a = 1\n" * 300)
    late = write(tmp_path / "r" / "b.py", "b = 2\n" * 300)
    (document,) = read_documents(walk_corpus([tmp_path], group="repo"))
    late.write_bytes(b"\xff binary now \x00")
    with pytest.raises(sources.DocumentChanged, match="binary"):
        list(document.pieces())


def test_long_jsonl_line_is_joined_in_linear_time(tmp_path, monkeypatch):
    """8,192 blocks of 512 bytes for one 4 MiB record: rebuilding the line block by block
    (``rest + block``) copies about 17 GB; collecting the parts copies it about once."""
    import time

    monkeypatch.setattr(sources, "READ_BLOCK", 512)
    text = "".join(f"word{i} " for i in range(600_000))[: 4 << 20]
    write(tmp_path / "one.jsonl", json.dumps({"text": text}) + "\n" + json.dumps({"text": "b"}))
    started = time.perf_counter()
    texts, skips = read([tmp_path])
    seconds = time.perf_counter() - started
    assert texts == [("one.jsonl:1", text), ("one.jsonl:2", "b")] and skips == []
    assert seconds < 3.0, f"{seconds:.1f} s to read a 4 MiB line in 512-byte blocks"


def test_lines_are_cut_the_same_whatever_the_blocks():
    data = b"a\nbb\n\nccc" + b"d" * 50 + b"\n\ne"
    expected = data.split(b"\n")
    for size in (1, 2, 3, 7, 64, 1000):
        blocks = [data[i : i + size] for i in range(0, len(data), size)]
        assert list(sources._lines(blocks)) == expected
    assert list(sources._lines([b"x\n"])) == [b"x"]
    assert list(sources._lines([])) == []


# peak RSS from /proc (VmHWM): ru_maxrss survives exec, so a child of a large pytest process
# would start from the parent's peak
RSS_SCRIPT = """
import re, sys, time
from pathlib import Path
from longnet_cli.data.sources import read_documents, walk_corpus
import pyarrow.parquet, json  # imported before the baseline
def peak():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
before = peak()
started = time.perf_counter()
documents = read_documents(walk_corpus([Path(sys.argv[1])]), scratch=Path(sys.argv[2]))
total = sum(d.nbytes for d in documents)
seconds = time.perf_counter() - started
print(total, peak() - before, seconds)
"""


def rss_reading(corpus: Path, scratch: Path) -> tuple[int, int, float]:
    """(text bytes read, peak RSS growth in bytes, seconds) of reading ``corpus`` afresh."""
    import subprocess
    import sys

    scratch.mkdir(exist_ok=True)
    result = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(corpus), str(scratch)],
                            capture_output=True, text=True, check=True)  # fmt: skip
    total, growth, seconds = result.stdout.split()
    return int(total), int(growth), float(seconds)


def test_50mb_single_line_jsonl_memory_and_time(tmp_path):
    """One 50 MB record: peak memory at most about 4x the record (measured 2x: the raw line,
    its decoded text, the record's string and its UTF-8 bytes are never all held at once)."""
    record = ("0123456789 abcdefghij " * 3)[:64]
    text = record * ((50 << 20) // len(record))
    write(tmp_path / "in" / "big.jsonl", json.dumps({"text": text}) + "\n")
    total, growth, seconds = rss_reading(tmp_path / "in", tmp_path / "scratch")
    assert total == len(text)
    print(f"50 MB jsonl line: peak RSS +{growth / 2**20:.0f} MiB, {seconds:.2f} s")
    assert growth < 3 * len(text), f"peak RSS grew by {growth >> 20} MiB"
    assert seconds < 20


def test_compressed_parquet_is_not_held_in_memory(tmp_path):
    """A .parquet.zst is decompressed into a scratch file: memory follows its row groups, not
    its size (held whole, the 60 MB would show in the peak)."""
    rows = [f"row {i} " + "x" * 3000 for i in range(20_000)]  # about 60 MB of text
    plain = write_parquet(tmp_path / "plain" / "t.parquet", {"text": rows},
                          row_group_size=512, compression="none")  # fmt: skip
    compressed = zstandard.ZstdCompressor(level=1).compress(plain.read_bytes())
    write(tmp_path / "in" / "t.parquet.zst", compressed)
    plain.unlink()
    total, growth, _ = rss_reading(tmp_path / "in", tmp_path / "scratch")
    assert total == sum(len(r) for r in rows)
    print(f"60 MB .parquet.zst: peak RSS +{growth / 2**20:.0f} MiB")
    assert growth < 44 << 20, f"peak RSS grew by {growth >> 20} MiB"
    assert list((tmp_path / "scratch").iterdir()) == []  # the scratch file is gone


def test_output_directory_inside_the_corpus_is_not_walked(tmp_path):
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "out" / "manifest.json", "{}")
    write(tmp_path / "z" / "b.txt", "b")
    assert walk([tmp_path], skip_dirs=[tmp_path / "out"]) == (["a.txt", "z/b.txt"], [])
    assert walk([tmp_path], skip_dirs=[tmp_path / "missing"])[0] == [
        "a.txt", "out/manifest.json", "z/b.txt"]  # fmt: skip


def test_several_inputs_never_share_a_source_or_a_repository(tmp_path):
    for side in ("left", "right"):
        write(tmp_path / side / "corpus" / "repo" / "f.py", f"{side}\n")
        write(tmp_path / side / "corpus" / "top.txt", f"top {side}\n")
    write(tmp_path / "single" / "top.txt", "single\n")
    inputs = [tmp_path / "left" / "corpus", tmp_path / "right" / "corpus"]
    texts, _ = read(inputs, group="repo")
    assert texts == [
        ("corpus~1/repo", "==> f.py <==\nleft\n"),
        ("corpus~1/top.txt", "top left\n"),
        ("corpus~2/repo", "==> f.py <==\nright\n"),
        ("corpus~2/top.txt", "top right\n"),
    ]
    texts, _ = read([inputs[0], tmp_path / "single" / "top.txt"], group="repo")
    assert [source for source, _ in texts] == ["corpus/repo", "corpus/top.txt", "top.txt"]
    texts, _ = read([inputs[0]])
    assert [source for source, _ in texts] == ["repo/f.py", "top.txt"]  # one input: no prefix


# --------------------------------------------------------------------------- built-in corpora


def by_directory(rels: list[str]) -> list[str]:
    """Relative paths in the walk's order: sorted by name within each directory."""
    return sorted(rels, key=lambda rel: rel.split("/"))


def site_walk(paths, include=sources.SITE_PACKAGES_INCLUDES):
    """What ``longnet tokenize --site-packages`` walks in ``paths`` (without --include)."""
    return walk(paths, include=include, exclude=sources.site_packages_excludes())


def test_site_packages_paths_are_this_environments_and_hold_pytest():
    paths = sources.site_packages_paths()
    assert paths and len(set(paths)) == len(paths)
    assert all(path.is_dir() and path == path.resolve() for path in paths)
    installed = Path(pytest.__file__).resolve()  # .../site-packages/pytest/__init__.py
    (home,) = [path for path in paths if path in installed.parents]
    rels, skips = site_walk([home])
    assert skips == []
    assert installed.relative_to(home).as_posix() in rels and "_pytest/python.py" in rels
    assert all(rel.endswith(".py") for rel in rels)
    for noise in ("__pycache__/", ".dist-info/", ".egg-info/"):
        assert not any(noise in rel for rel in rels), noise
    assert not any(rel.rsplit("/", 1)[-1].startswith("__editable__") for rel in rels)
    assert rels == by_directory(rels)
    assert site_walk([home]) == (rels, [])  # deterministic: the same walk twice


def test_site_packages_never_pull_in_the_editable_checkout():
    """An editable install of longnet is a .pth file and a finder module in site-packages that
    point at its checkout: every file a --site-packages walk reads really lies in
    site-packages, none in longnet's source, and the finder (this machine's paths) is out."""
    from importlib.metadata import PackageNotFoundError, distribution

    packages = {Path(sources.__file__).resolve().parents[1]}  # the longnet_cli tests import
    try:
        direct_url = distribution("longnet-cli").read_text("direct_url.json") or "{}"
    except PackageNotFoundError:
        direct_url = "{}"
    url = json.loads(direct_url).get("url", "")
    if url.startswith("file://"):  # where the editable install points
        packages.add(Path(url[len("file://") :]).resolve() / "longnet_cli")
    paths = sources.site_packages_paths()
    excludes = sources.site_packages_excludes()
    entries = list(walk_corpus(paths, include=sources.SITE_PACKAGES_INCLUDES, exclude=excludes))
    assert entries
    for entry in entries:
        real = Path(os.path.realpath(entry.path))
        assert any(path in real.parents for path in paths), entry.path
        assert not any(package in real.parents for package in packages), entry.path
        assert not entry.rel.startswith("longnet_cli/"), entry.rel


def test_site_packages_excludes_leave_out_bytecode_binaries_and_metadata(tmp_path):
    python = ["pkg/__init__.py", "pkg/_vendor/six.py", "pkg/sub/mod.py", "top.py"]
    other_text = ["pkg/data/table.txt", "pkg/py.typed", "pkg/stubs.pyi"]
    noise = ["pkg/__pycache__/mod.cpython-311.pyc", "pkg/_speed.cpython-311-x86_64-linux-gnu.so",
             "pkg.libs/libgfortran-1a2b.so.5.0.0", "pkg-1.0.dist-info/METADATA",
             "pkg-1.0.dist-info/RECORD", "old-0.1.egg-info/PKG-INFO", "distutils-precedence.pth",
             "__editable__.other-0.1.pth", "__editable___other_0_1_finder.py",
             "pkg/__pycache__/stale.py", "top.pyc"]  # fmt: skip
    for rel in [*python, *other_text, *noise]:
        write(tmp_path / rel, f"# {rel}\n")
    assert site_walk([tmp_path]) == (by_directory(python), [])
    # --include replaces the default *.py; the excludes stay
    assert site_walk([tmp_path], include=["*"]) == (by_directory(python + other_text), [])


def test_site_packages_paths_deduplicated_existing_and_never_nested(tmp_path, monkeypatch):
    import site
    import sysconfig

    root = tmp_path.resolve()
    lib = root / "venv" / "lib" / "site-packages"
    nested = lib / "inner"
    system = root / "system" / "dist-packages"
    for directory in (nested, system):
        directory.mkdir(parents=True)
    (root / "venv" / "lib64").symlink_to(root / "venv" / "lib")  # a venv's lib64 -> lib
    platlib = root / "venv" / "lib64" / "site-packages"
    monkeypatch.setattr(
        sysconfig, "get_paths", lambda: {"purelib": str(lib), "platlib": str(platlib)}
    )
    monkeypatch.setattr(
        site, "getsitepackages", lambda: [str(nested), str(root / "missing"), str(system)]
    )
    assert sources.site_packages_paths() == [lib, system]
    # a later directory holding an earlier one replaces it (each file walked once)
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(root / "venv")])
    assert sources.site_packages_paths() == [root / "venv"]
    monkeypatch.setattr(site, "getsitepackages", lambda: [])
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"purelib": str(root / "missing")})
    assert sources.site_packages_paths() == []
