"""The fuzz tests' machinery: seeded mutations of one file, and what a CLI answer must look like.

A mutation changes a file's content at seeded random places: bytes flipped, overwritten, two
ranges swapped, the file truncated (to 0 bytes too), garbage appended, the file removed, every
byte set to 0xFF (``saturate``: a shard of token ids beyond the vocabulary); for structured
text (JSON, JSON lines, YAML) also a key deleted or a value of the wrong type; for a symbolic
link: removed, dangling, pointed at another file or at an incomplete copy of its directory. Every
mutation changes the bytes; ``Mutated.same_meaning`` says when structured text still parses to
the same value (a truncated final newline), which no reader can or need notice.

An answer (``Answer``) is what ``longnet_cli.cli.main`` did in-process: its exit code, stdout and
stderr, or the exception that escaped it. ``problems`` lists what is wrong with it against the
rules of the CLI (cli.py): a failure is exit 1 or 2 and exactly one ``error:`` line (a
``usage:`` line may follow), naming the file; never a traceback, never the generic fallback
for an unexpected exception ("run with --debug for a traceback").
"""

from __future__ import annotations

import json
import os
import random
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BYTE_MUTATIONS = ("flip", "overwrite", "swap", "truncate", "empty", "append", "remove")
SATURATE = "saturate"  # every byte 0xFF, the size kept: a shard of token ids beyond any vocabulary
STRUCTURED_MUTATIONS = ("delete_key", "wrong_type")
# a symbolic link: gone, broken, at another file beside its target, at an incomplete copy of its
# target's directory (a version a failed build left: one file missing)
LINK_MUTATIONS = ("remove", "dangle", "retarget", "incomplete")
FORMATS = ("binary", "json", "jsonl", "yaml", "link")
UNEXPECTED = "run with --debug for a traceback"  # cli.py's fallback for an unexpected exception
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: hundreds of parses


def load_yaml(data: bytes | str) -> Any:
    """``yaml.safe_load`` through libyaml when it is there (several times faster)."""
    return yaml.load(data, Loader=_YAML_LOADER)


@dataclass(frozen=True)
class Mutated:
    """What a mutation did to a file, for messages and for the expectations."""

    path: Path
    mutation: str
    detail: str  # where and what: "offset 1234: 2 bytes xor 0x5a"
    size_before: int
    size_after: int | None  # None: removed
    same_meaning: bool = False  # structured text that still parses to the same value
    key: str | None = None  # the key path a structured mutation deleted or retyped

    @property
    def changed_size(self) -> bool:
        return self.size_after != self.size_before

    def __str__(self) -> str:
        return f"{self.mutation} of {self.path.name} ({self.detail})"


def mutate(path: Path, mutation: str, rng: random.Random, fmt: str = "binary") -> Mutated:
    """Apply ``mutation`` to the file at ``path``, choosing places with ``rng``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "link":
        return _link(path, mutation, rng)
    before = path.read_bytes()
    if mutation == "remove":
        path.unlink()
        return Mutated(path, mutation, "file removed", len(before), None)
    key = None
    if mutation in STRUCTURED_MUTATIONS:
        after, detail, key = _structured(before, mutation, rng, fmt)
    elif mutation in (*BYTE_MUTATIONS, SATURATE):
        after, detail = _bytes(before, mutation, rng)
    else:
        raise ValueError(f"unknown mutation {mutation!r}")
    assert after != before, f"{mutation} left {path} unchanged"
    path.write_bytes(after)
    same = fmt != "binary" and _parsed(before, fmt) == _parsed(after, fmt) is not _UNPARSEABLE
    return Mutated(path, mutation, detail, len(before), len(after), same, key)


def _link(path: Path, mutation: str, rng: random.Random) -> Mutated:
    """A symbolic link removed, pointed at nothing, at another file beside its target (a shard
    link at another shard), or at the same name in an incomplete copy of the target's directory
    (the corpus pointer at a version whose build died: one of its files missing)."""
    if mutation not in LINK_MUTATIONS:
        raise ValueError(f"unknown link mutation {mutation!r}")
    target = Path(os.readlink(path))
    directory = (path.parent / target).parent
    size = (path.parent / target).stat().st_size
    beside = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != target.name)
    detail = ""
    if mutation == "dangle":
        new = target.parent.with_name("999999") / target.name
    elif mutation == "retarget":
        new = target.parent / rng.choice(beside)
    elif mutation == "incomplete":
        copy = directory.with_name(directory.name + "-incomplete")
        shutil.copytree(directory, copy, symlinks=True)
        missing = rng.choice([name for name in beside if not name.startswith(".")])
        (copy / missing).unlink()
        new = target.parent.with_name(copy.name) / target.name
        detail = f" ({missing} missing there)"
    path.unlink()
    if mutation == "remove":
        return Mutated(path, mutation, f"link to {target} removed", size, None)
    path.symlink_to(new)
    return Mutated(path, mutation, f"link to {target} now to {new}{detail}", size, -1)


def _bytes(data: bytes, mutation: str, rng: random.Random) -> tuple[bytes, str]:
    """One byte-level mutation of a non-empty ``data``."""
    size = len(data)
    out = bytearray(data)
    if mutation == "flip":
        count = rng.randint(1, 4)
        offsets = sorted(rng.sample(range(size), min(count, size)))
        masks = [rng.randrange(1, 256) for _ in offsets]
        for offset, mask in zip(offsets, masks):
            out[offset] ^= mask
        shown = ", ".join(f"{o} ^ 0x{m:02x}" for o, m in zip(offsets, masks))
        return bytes(out), f"bytes at {shown}"
    if mutation == "overwrite":
        length = min(rng.randint(1, 16), size)
        offset = rng.randrange(size - length + 1)
        junk = bytearray(rng.randbytes(length))
        if junk == out[offset : offset + length]:
            junk[0] ^= 0xFF
        out[offset : offset + length] = junk
        return bytes(out), f"{length} random bytes at offset {offset}"
    if mutation == "swap":
        for _ in range(64):
            length = rng.randint(1, max(1, min(64, size // 2)))
            first = rng.randrange(size - 2 * length + 1)
            second = rng.randrange(first + length, size - length + 1)
            a, b = data[first : first + length], data[second : second + length]
            if a != b:
                out[first : first + length], out[second : second + length] = b, a
                return bytes(out), f"{length} bytes at offsets {first} and {second} swapped"
        return _bytes(data, "flip", rng)  # a file too uniform to swap anything in it
    if mutation == "truncate":
        offset = rng.randrange(size)
        return data[:offset], f"truncated to {offset} of {size} bytes"
    if mutation == "empty":
        return b"", f"truncated to 0 of {size} bytes"
    if mutation == SATURATE:
        return b"\xff" * size, f"all {size} bytes set to 0xff"
    if mutation == "append":
        junk = rng.randbytes(rng.randint(1, 64)) + b"\x00"  # never only whitespace
        return data + junk, f"{len(junk)} garbage bytes appended"
    raise ValueError(f"unknown byte mutation {mutation!r}")


_UNPARSEABLE = object()


def _parsed(data: bytes, fmt: str) -> Any:
    """The value of structured text (a list of line values for JSON lines), or _UNPARSEABLE."""
    try:
        text = data.decode("utf-8")
        if fmt == "json":
            return json.loads(text)
        if fmt == "jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return load_yaml(text)
    except (UnicodeDecodeError, ValueError, yaml.YAMLError):
        return _UNPARSEABLE


def _structured(data: bytes, mutation: str, rng: random.Random, fmt: str) -> tuple[bytes, str, str]:
    """Delete a key, or give a value the wrong type, somewhere in parsed JSON / JSONL / YAML."""
    if fmt == "binary":
        raise ValueError(f"{mutation} needs a structured format, not binary")
    if fmt == "jsonl":
        lines = data.decode("utf-8").splitlines(keepends=True)
        candidates = [i for i, line in enumerate(lines) if line.strip()]
        index = rng.choice(candidates)
        value = json.loads(lines[index])
        value, where, key = _change(value, mutation, rng)
        lines[index] = json.dumps(value) + "\n"
        return "".join(lines).encode(), f"line {index + 1}: {where}", key
    value = json.loads(data) if fmt == "json" else load_yaml(data)
    value, where, key = _change(value, mutation, rng)
    if fmt == "json":
        return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode(), where, key
    return yaml.safe_dump(value, sort_keys=False).encode(), where, key


def _change(value: Any, mutation: str, rng: random.Random) -> tuple[Any, str, str]:
    """``value`` with one key deleted (``delete_key``) or one value retyped (``wrong_type``)."""
    places = list(_places(value, ""))
    if mutation == "delete_key":
        keyed = [(parent, key, path) for parent, key, path in places if isinstance(parent, dict)]
        parent, key, path = rng.choice(keyed)
        del parent[key]
        return value, f"key {path} deleted", path
    parent, key, path = rng.choice(places)
    old = parent[key]
    parent[key] = _wrong_type(old, rng)
    return value, f"{path}: {old!r} -> {parent[key]!r}"[:200], path


def _places(value: Any, path: str):
    """(container, key, dotted path) of every value inside ``value``, depth first."""
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, child in items:
        where = f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]"
        where = where.lstrip(".")
        yield value, key, where
        if isinstance(child, dict | list) and child:
            yield from _places(child, where)


def _wrong_type(value: Any, rng: random.Random) -> Any:
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool) or value is None:
        return rng.choice(["yes", [1], {"x": 1}])
    if isinstance(value, int | float):
        return rng.choice([str(value) + "x", [value], None, {"value": value}])
    if isinstance(value, str):
        return rng.choice([7, -1, [value], None, True])
    if isinstance(value, list):
        return rng.choice(["list", 3, {"0": value[:1]}])
    return rng.choice(["mapping", 5, [1, 2], None])


# -- answers -------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What ``main(args)`` did: exit code and output, or the exception that escaped it."""

    args: list[str]
    code: int | None  # None: an exception escaped main (a traceback for the user)
    stdout: str
    stderr: str
    escaped: str | None = None  # the last lines of the escaped exception's traceback

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def outcome(self) -> str:
        """A short class: "exit 0", "exit 2", "traceback"."""
        return "traceback" if self.code is None else f"exit {self.code}"

    def mentions(self, names: tuple[str, ...], anywhere: bool = False) -> bool:
        """Whether the error line or a ``PROBLEM:`` line (``anywhere``: any line) names one of
        ``names``."""
        lines = (self.stderr + "\n" + self.stdout).splitlines()
        if not anywhere:
            lines = [line for line in lines if line.startswith(("error:", "PROBLEM:"))]
        return any(name in line for line in lines for name in names)


def call(main, args: list[str], capsys) -> Answer:
    """Run the CLI in this process; an exception that escapes ``main`` is kept, not raised."""
    capsys.readouterr()
    escaped = None
    try:
        main(args)
        code: int | None = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except Exception:  # what a user would see as a traceback
        code = None
        escaped = "".join(traceback.format_exc().splitlines(keepends=True)[-6:])
    captured = capsys.readouterr()
    return Answer(list(args), code, captured.out, captured.err, escaped)


def problems(
    answer: Answer, allowed: set[int], names: tuple[str, ...], note: bool = False
) -> list[str]:
    """What is wrong with ``answer``: exit code not in ``allowed``, a traceback, the unexpected-
    exception fallback, an error that is not one line or names none of ``names``; with ``note``,
    an exit 0 that does not name one of ``names`` either (a damaged file passed over silently).
    """
    found = []
    if answer.code is None:
        return [f"traceback escaped main:\n{answer.escaped}"]
    if "Traceback (most recent call last)" in answer.stderr + answer.stdout:
        found.append("a traceback was printed")
    if answer.code not in allowed:
        found.append(f"exit {answer.code}, expected one of {sorted(allowed)}")
    if answer.code != 0:
        errors = answer.error_lines
        if len(errors) != 1:
            found.append(f"{len(errors)} error lines, expected 1")
        else:
            lines = answer.stderr.splitlines()
            after = lines[lines.index(errors[0]) + 1 :]
            if any(line and not line.startswith("usage:") for line in after):
                found.append(f"the error is not one line: {after[:3]}")
            if UNEXPECTED in errors[0]:
                found.append("an unexpected exception (cli.py's generic fallback)")
        if not answer.mentions(names):
            found.append(f"the error names none of {list(names)}")
    elif note and not answer.mentions(names, anywhere=True):
        found.append(f"exit 0 without a note naming any of {list(names)}")
    return found


def describe(answer: Answer) -> str:
    """The answer for a failure message: command, exit, the last lines of stderr."""
    tail = "\n".join(answer.stderr.strip().splitlines()[-6:])
    shown = f"longnet {' '.join(answer.args)}\n  -> {answer.outcome}\n  stderr: {tail}"
    if answer.escaped:
        shown += f"\n  escaped:\n{answer.escaped}"
    return shown
