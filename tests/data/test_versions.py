"""Versioned corpus directories (data/versions.py): a reader keeps the version it opened across
rebuilds, a failed or killed build leaves the previous version current and is cleaned up,
versions a reader holds are kept, and a flat directory from before reads and converts.

Every corpus here is built by ``longnet tokenize`` from generated files; what a reader returns
is compared with the texts written, decoded through the reader's own documents table, shards
and tokenizer (so a reader that mixed two versions would not decode to either).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece
from helpers import check_output, files_of, run, texts_of, tokenize, write

import longnet_cli
from longnet_cli.data import versions
from longnet_cli.data.format.reader import TokenizedCorpus
from longnet_cli.data.tokenizer import train_tokenizer

SMALL = ("--shard-tokens", "300", "--holdout", "0")  # several shards per version

# a reader in another process (a training run): opens the corpus, waits, then reads it all
READER = """
import json, sys
from longnet_cli.data.format.reader import TokenizedCorpus
from helpers import texts_of
corpus = TokenizedCorpus.open(sys.argv[1])
print(corpus.version, flush=True)
sys.stdin.readline()
print(json.dumps(texts_of(corpus)), flush=True)
"""

# ``longnet tokenize`` killed by SIGKILL once two shards are written (the build is half done)
KILLED = """
import os, signal, sys
from longnet_cli.cli import main
from longnet_cli.data.format import writer
finish, done = writer.ShardWriter._finish_shard, []
def finish_then_die(self):
    finish(self)
    done.append(1)
    if len(done) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
writer.ShardWriter._finish_shard = finish_then_die
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    texts = [f"alpha beta gamma delta document {i}: " + "words and more words " * 5
             for i in range(50)]  # fmt: skip
    path = tmp_path_factory.mktemp("tokenizer") / "model.model"
    path.write_bytes(train_tokenizer(texts, 400))
    return path


@pytest.fixture(scope="module")
def processor(model_file):
    return sentencepiece.SentencePieceProcessor(model_file=str(model_file))


def write_corpus(root: Path, tag: str, count: int) -> list[list[str]]:
    """``root`` replaced by ``count`` files whose text names ``tag``: [[source, text]]."""
    shutil.rmtree(root, ignore_errors=True)
    expected = []
    for i in range(count):
        text = f"{tag} document {i}: " + " ".join(f"{tag}{i}-{j}" for j in range(30)) + "\n"
        write(root / f"d{i:02d}.txt", text)
        expected.append([f"d{i:02d}.txt", text])
    return expected


def summary(capsys, paths, out: Path, *options: str, model: Path) -> dict:
    """``longnet tokenize --json``'s summary (exit 0 asserted)."""
    capsys.readouterr()
    assert tokenize(paths, out, *SMALL, *options, "--json", model=model) == 0
    return json.loads(capsys.readouterr().out)


def child_env() -> dict[str, str]:
    """This checkout and the tests folder on a child's import path."""
    paths = [str(Path(longnet_cli.__file__).parents[1]), str(Path(__file__).resolve().parents[1])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def flatten(built: Path, flat: Path) -> None:
    """``flat``: ``built`` as written before versions existed (its files directly in it)."""
    shutil.copytree(built, flat)  # links dereferenced
    shutil.rmtree(flat / "versions")
    assert not any(path.is_symlink() for path in flat.iterdir())


def test_a_reader_keeps_its_version_across_rebuilds(tmp_path, model_file, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    old = write_corpus(root, "alpha", 6)
    assert summary(capsys, [root], out, model=model_file)["version"] == "versions/000001"
    reader = TokenizedCorpus.open(out)  # opened (sizes checked), no shard or index read yet
    copy = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker receives

    new = write_corpus(root, "beta", 9)
    assert summary(capsys, [root], out, model=model_file)["kept_versions"] == ["versions/000001"]
    third = summary(capsys, [root], out, "--force", model=model_file)
    assert third["version"] == "versions/000003"
    assert third["kept_versions"] == ["versions/000001"]  # 000002: no reader, removed
    assert sorted(os.listdir(out / "versions")) == ["000001", "000003"]

    assert reader.version == copy.version == "versions/000001"
    assert texts_of(reader) == old and texts_of(copy) == old
    assert reader.verify(full=True) == []
    fresh = TokenizedCorpus.open(out)
    assert fresh.version == "versions/000003" and texts_of(fresh) == new
    assert len(fresh.manifest["shards"]) > len(reader.manifest["shards"]) > 1
    assert json.loads((out / "manifest.json").read_text()) == fresh.manifest

    for corpus in (reader, copy, fresh):
        corpus.close()
    assert summary(capsys, [root], out, model=model_file)["kept_versions"] == []  # up to date
    assert os.listdir(out / "versions") == ["000003"]


def test_a_version_held_by_another_process_is_kept_until_it_exits(tmp_path, model_file, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    old = write_corpus(root, "alpha", 6)
    assert tokenize([root], out, *SMALL, model=model_file) == 0
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        assert reader.stdout.readline().strip() == "versions/000001"
        for tag, count in (("beta", 9), ("gamma", 4)):
            new = write_corpus(root, tag, count)
            capsys.readouterr()
            assert tokenize([root], out, *SMALL, model=model_file) == 0
            assert "versions/000001: still open by a reader" in capsys.readouterr().out
        assert sorted(os.listdir(out / "versions")) == ["000001", "000003"]
        texts, _ = reader.communicate("\n", timeout=60)
    finally:
        reader.kill()
    assert reader.returncode == 0 and json.loads(texts) == old
    assert summary(capsys, [root], out, model=model_file)["up_to_date"] is True
    assert os.listdir(out / "versions") == ["000003"]  # the reader exited: removed
    assert texts_of(TokenizedCorpus.open(out)) == new


def test_a_killed_build_leaves_the_previous_version_and_is_cleaned_up(tmp_path, model_file, capsys):
    root, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    old = write_corpus(root, "alpha", 6)
    assert tokenize([root], out, *SMALL, model=model_file) == 0
    old_files = files_of(out)
    write_corpus(other, "beta", 9)
    command = ["tokenize", str(other), "--out", str(out), "--quiet", *SMALL,
               "--tokenizer", str(model_file)]  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", KILLED, *command], env=child_env(),
                            capture_output=True, timeout=120)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    partial = out / "versions" / "000002"
    assert sorted(os.listdir(out / "versions")) == ["000001", "000002"]
    assert list(partial.glob("shard-*")) and not (partial / "manifest.json").exists()
    assert files_of(out) == old_files  # the previous version, current and whole
    assert texts_of(TokenizedCorpus.open(out, verify="full")) == old

    (out / ".staging").mkdir()  # what longnet before versions left behind when interrupted
    (out / ".staging" / "shard-00000.bin.tmp").write_bytes(b"\0" * 8)
    assert summary(capsys, [root], out, model=model_file)["up_to_date"] is True
    assert os.listdir(out / "versions") == ["000001"]  # the next run cleans up, even this one
    assert not (out / ".staging").exists() and files_of(out) == old_files


def test_a_version_removed_while_a_reader_opens_it(tmp_path, model_file, monkeypatch):
    """The races of opening, made to happen: between resolving the pointer and locking the
    version, a rebuild removes that version, or converts the flat directory being opened. The
    reader tries again and reads the new current version, whole."""
    root, out, flat = tmp_path / "in", tmp_path / "out", tmp_path / "flat"
    write_corpus(root, "alpha", 6)
    assert tokenize([root], out, *SMALL, model=model_file) == 0
    flatten(out, flat)
    new = write_corpus(root, "beta", 9)
    real_lock = versions._shared_lock
    for directory, version in ((out, "versions/000002"), (flat, "versions/000001")):

        def rebuild_first(resolved, directory=directory):
            monkeypatch.setattr(versions, "_shared_lock", real_lock)
            assert tokenize([root], directory, *SMALL, model=model_file) == 0
            return real_lock(resolved)

        monkeypatch.setattr(versions, "_shared_lock", rebuild_first)
        reader = TokenizedCorpus.open(directory)
        assert versions._shared_lock is real_lock  # the rebuild did run in between
        assert reader.version == version and texts_of(reader) == new


def test_a_flat_corpus_reads_and_converts_without_breaking_its_reader(
    tmp_path, model_file, processor, capsys
):
    root, built, flat, idle = (tmp_path / name for name in ("in", "built", "flat", "idle"))
    old = write_corpus(root, "alpha", 6)
    assert tokenize([root], built, *SMALL, model=model_file) == 0
    flatten(built, flat)
    flatten(built, idle)
    reader = TokenizedCorpus.open(flat)
    assert reader.version is None and texts_of(reader) == old and reader.verify(True) == []
    assert summary(capsys, [root], flat, model=model_file)["up_to_date"] is True  # kept flat
    assert not (flat / "versions").exists()

    new = write_corpus(root, "beta", 9)
    result = summary(capsys, [root], flat, model=model_file)
    assert result["version"] == "versions/000001" and result["kept_versions"] == ["."]
    assert os.readlink(flat / "manifest.json") == "versions/000001/manifest.json"
    assert not (flat / "shard-00000.bin").is_symlink()  # the reader's files, left as they are
    reader.close()  # dropped its memory maps too: all of it is read again below
    assert texts_of(reader) == old and reader.verify(True) == []
    assert texts_of(TokenizedCorpus.open(flat)) == new

    assert summary(capsys, [root], flat, model=model_file)["up_to_date"] is True
    expected = [tuple(pair) for pair in new]
    check_output(flat, expected, {}, processor)  # converted: every name a link
    assert not (flat / ".readers.lock").exists()

    summary(capsys, [root], idle, model=model_file)  # no reader: converted at once
    check_output(idle, expected, {}, processor)


def test_inspect_verifies_the_current_version(tmp_path, model_file, capsys):
    root, out = tmp_path / "in", tmp_path / "out"
    write_corpus(root, "alpha", 6)
    assert tokenize([root], out, *SMALL, model=model_file) == 0
    write_corpus(root, "beta", 9)
    assert tokenize([root], out, *SMALL, model=model_file) == 0
    capsys.readouterr()
    assert run(["inspect", str(out)]) == 0
    assert "(current version: versions/000002)" in capsys.readouterr().out
    with open(out / "shard-00001.bin", "r+b") as shard:  # the current version's, in place
        byte = shard.read(1)
        shard.seek(0)
        shard.write(bytes([byte[0] ^ 0xFF]))
    assert run(["inspect", str(out)]) == 1
    report = capsys.readouterr().out
    assert str(out / "versions" / "000002" / "shard-00001.bin") in report and "sha256" in report

    write_corpus(root, "gamma", 5)
    assert tokenize([root], out, *SMALL, model=model_file) == 0
    (out / "tokenizer.model").unlink()  # a link people and tools open
    capsys.readouterr()
    assert run(["inspect", str(out)]) == 1
    assert f"PROBLEM: {out / 'tokenizer.model'}: is not" in capsys.readouterr().out
    assert tokenize([root], out, *SMALL, model=model_file) == 0  # up to date: links it again
    assert run(["inspect", str(out)]) == 0


def test_versions_imports_no_reader_and_no_pyarrow():
    """versions.py stays stdlib only (with the format's names and errors): no import cycle
    with the reader, which imports versions."""
    code = (
        "import sys, longnet_cli.data.versions\n"
        "assert 'longnet_cli.data.format.reader' not in sys.modules\n"
        "assert 'pyarrow' not in sys.modules and 'numpy' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
