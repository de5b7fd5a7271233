"""Walk a corpus and read it as documents: text and code files, jsonl, parquet, zstd streams.

Two layers:
- ``walk_corpus`` lists the files of the input paths in a deterministic order (directories
  recursively, sorted by name), applying include/exclude globs, skipping hidden and VCS
  directories and symlink loops. It reads no file contents. One directory is listed at a time,
  held as one tagged name string per entry (about 80 bytes, against 230 for an os.DirEntry);
  what readdir says of an entry decides file or directory, so a walk makes one ``stat`` per
  directory and per symlink, and one per file only when sizes are asked for (``stat``).
- ``read_documents`` turns those files into ``Document`` objects: a text file is one document,
  every record of a jsonl or parquet file is one, and with ``group="repo"`` all files under one
  immediate subdirectory of an input path are one, each preceded by a ``==> path <==`` header.

Bad input never stops a run: it is reported through ``on_skip`` with a reason from
``SKIP_REASONS`` and skipped. Every document is checked completely before it is yielded, so a
consumer never sees part of a document that later turns out to be binary or invalid. Documents
larger than ``MAX_INLINE_BYTES`` are not held in memory: they are streamed twice, once to check
and hash them, once to hand out their text piece by piece. The second read is hashed again: a
document that changed or vanished in between raises ``DocumentChanged`` at its end, and the
consumer drops what it took from it (reason ``changed``).

Source names. A document's ``source`` is its path relative to its input (``books/a.txt``), with
``:N`` (jsonl line) or ``#N`` (parquet row) for records. With several inputs every name starts
with its input's name (``books/a.txt``, ``notes.md``), followed by ``~K`` (its 1-based position
on the command line) where two inputs have the same name, so two inputs never share a name
or a repository. Linux file names are bytes: a name is written as its UTF-8 text, each byte
that is not part of valid UTF-8 as ``\\xNN`` (two lowercase hex digits) and a backslash as
``\\\\``, so the exact bytes can always be read back (``source_name_bytes``).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fnmatch
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISDIR

SKIP_REASONS = (
    "binary",
    "invalid-utf8",
    "empty",
    "corrupt-zstd",
    "malformed-jsonl",
    "bad-parquet",
    "unreadable",
    "symlink-loop",
    "changed",
)
VCS_DIRS = frozenset({".git", ".hg", ".svn", ".bzr", "_darcs", "CVS"})
READ_BLOCK = 1 << 20  # bytes read at a time
ZSTD_READ_BLOCK = 1 << 14  # compressed bytes read at a time
MAX_INLINE_BYTES = 16 << 20  # larger documents are streamed, never held as one string
PIECE_CHARS = 1 << 16  # a document's text is handed out in pieces of about this many characters
MAX_PIECE_CHARS = 1 << 18  # hard cut for text without newlines
_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates, from JSON escapes only


@dataclass(frozen=True)
class Skip:
    """Something in the corpus that was not used, and why."""

    source: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Entry:
    """One file of the corpus: where it is, its path relative to its input, what it holds."""

    path: Path
    rel: str  # posix path relative to its input path (the file name for a file input)
    kind: str  # "text", "jsonl" or "parquet"
    compressed: bool  # zstandard-compressed (.zst)
    size: int
    mtime_ns: int
    group: str | None = None  # with group="repo": the repository's source name (see above)
    source: str = ""  # the readable, unique source name of the file (see the module docstring)


@dataclass
class Document:
    """One document: its source and text (inline, or a re-iterable stream of text blocks)."""

    source: str
    nbytes: int  # UTF-8 bytes of the text
    sha256: str  # of the UTF-8 text
    text: str | None = None
    stream: Callable[[], Iterator[str]] | None = field(default=None, repr=False)

    def pieces(self) -> Iterator[str]:
        """The text in pieces that end after a newline where possible (see ``split_pieces``)."""
        blocks = [self.text] if self.text is not None else self.stream()
        return split_pieces(blocks)


class DocumentChanged(Exception):
    """A streamed document whose second read differs from its first (changed or vanished)."""

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


class SourceError(Exception):
    """A file that cannot be used; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- names


def source_name(name: str) -> str:
    """The readable, lossless form of a file name as Python gives it (undecodable bytes as
    lone surrogates, ``surrogateescape``): bad bytes as ``\\xNN``, a backslash as ``\\\\``."""
    raw = name.encode("utf-8", "surrogateescape")
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def source_name_bytes(source: str) -> bytes:
    """The exact bytes of a name written by ``source_name`` (its inverse)."""
    return re.sub(
        rb"\\(\\|x[0-9a-f]{2})",
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]),
        source.encode("utf-8"),
    )


def input_names(paths: Sequence[Path]) -> list[str]:
    """The name each input gives its sources: empty for a single input, else the input's last
    path component; when two inputs share one, every name is followed by ``~K``, its input's
    1-based position, so that no two inputs ever give the same name."""
    if len(paths) < 2:
        return [""]
    names = [Path(os.path.abspath(path)).name or "root" for path in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{name}~{index + 1}" for index, name in enumerate(names)]


# --------------------------------------------------------------------------- walking


def stdlib_path() -> Path:
    """This interpreter's standard library source tree: a real code corpus on every machine."""
    import sysconfig

    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_excludes() -> tuple[str, ...]:
    """What ``longnet tokenize --stdlib`` leaves out of ``stdlib_path()``: installed packages
    (not the standard library), bytecode, compiled extensions, the build configuration (a
    static library) and bundled wheels: binary noise that would only be skipped and counted."""
    import sys

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return ("site-packages", "dist-packages", "__pycache__", "*.pyc", "lib-dynload",
            f"config-{version}*", "*.whl")  # fmt: skip


def site_packages_paths() -> list[Path]:
    """This environment's installed packages: the purelib and platlib directories of this
    interpreter, then ``site.getsitepackages()`` (a venv's system packages when it includes
    them), deduplicated by real path, existing only, none inside another (never walked twice).
    The user site is left out: it belongs to a user, not to the environment."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    candidates = [paths.get("purelib"), paths.get("platlib"), *site.getsitepackages()]
    found: list[Path] = []
    for candidate in candidates:
        if not candidate or not os.path.isdir(candidate):
            continue
        real = Path(os.path.realpath(candidate))
        if any(real == kept or kept in real.parents for kept in found):
            continue
        found = [kept for kept in found if real not in kept.parents]
        found.append(real)
    return found


SITE_PACKAGES_INCLUDES = ("*.py",)  # what --site-packages reads unless --include is given


def site_packages_excludes() -> tuple[str, ...]:
    """What ``longnet tokenize --site-packages`` leaves out, whatever --include says: bytecode,
    compiled extensions and the shared libraries wheels bundle (``numpy.libs``), packaging
    metadata (``*.dist-info``, ``*.egg-info``, ``*.pth``) and editable-install finders
    (``__editable__*``: paths of a checkout elsewhere, not package source)."""
    return ("__pycache__", "*.pyc", "*.so", "*.so.*", "*.pyd", "*.dll", "*.dylib", "*.libs",
            "*.dist-info", "*.egg-info", "*.pth", "__editable__*", "*.whl")  # fmt: skip


def _kind(name: str) -> tuple[str, bool]:
    """(kind, compressed) from a file name: x.jsonl, x.parquet, x.jsonl.zst, x.txt.zst, ..."""
    lower = name.lower()
    compressed = lower.endswith(".zst")
    if compressed:
        lower = lower[: -len(".zst")]
    if lower.endswith(".jsonl"):
        return "jsonl", compressed
    if lower.endswith(".parquet"):
        return "parquet", compressed
    return "text", compressed


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    """Glob match on the relative path, or on the file name for patterns without a slash."""
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or ("/" not in p and fnmatch.fnmatchcase(name, p))
               for p in patterns)  # fmt: skip


def walk_corpus(
    paths: Sequence[Path],
    *,
    group: str = "file",
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    hidden: bool = False,
    skip_dirs: Sequence[Path] = (),
    on_skip: Callable[[Skip], None] = lambda skip: None,
    stat: bool = True,
) -> Iterator[Entry]:
    """The corpus files in deterministic order. Paths must exist (checked by the caller).

    ``group="repo"``: files inside an immediate subdirectory of a directory input belong to that
    repository (``group``, its source name); files directly under the input have none.
    ``skip_dirs``: directories never walked (the output directory when it lies in the corpus).
    ``stat`` False: no ``stat`` per file; an entry's size and mtime_ns are -1 unless already
    known (a symlink's), and a file that cannot be read is reported when it is read
    (``read_documents`` needs neither).
    """
    skipped_keys = set()
    for directory in skip_dirs:
        try:
            found = os.stat(directory)
        except OSError:
            continue
        skipped_keys.add((found.st_dev, found.st_ino))
    for root, name in zip(paths, input_names(paths)):
        root = Path(root)
        visited: set[tuple[int, int]] = set(skipped_keys)
        if root.is_file():
            entry = _entry(root, root.name, None, name or root.name, on_skip)
            if entry is not None:
                yield entry
            continue
        prefix = f"{name}/" if name else ""
        walk = _walk_dir(root, "", visited, hidden, exclude, on_skip, skipped_keys)
        for path, rel, known in walk:
            if include and not _matches(rel, include):
                continue
            top = rel.split("/", 1)[0] if group == "repo" and "/" in rel else None
            repo = None if top is None else source_name(prefix + top)
            entry = _entry(path, rel, repo, prefix + rel, on_skip, known, stat)
            if entry is not None:
                yield entry


def _walk_dir(directory, prefix, visited, hidden, exclude, on_skip, quiet=frozenset()):
    """(path, relative path, stat or None) of files under ``directory``, sorted, following
    symlinks once (a symlink's stat comes with it). Directories whose (device, inode) is in
    ``quiet`` are left out without a word."""
    try:
        stat = directory.stat()
    except OSError as err:
        on_skip(Skip(source_name(prefix or str(directory)), "unreadable", err.strerror or str(err)))
        return
    key = (stat.st_dev, stat.st_ino)
    if key in quiet:
        return
    if key in visited:
        on_skip(Skip(source_name(prefix), "symlink-loop", f"{directory} was already walked"))
        return
    visited.add(key)
    try:
        children = _listing(directory)
    except OSError as err:
        on_skip(Skip(source_name(prefix or str(directory)), "unreadable", err.strerror or str(err)))
        return
    for tagged in children:
        name, tag = tagged[:-2], tagged[-1]
        rel = f"{prefix}{name}"
        if exclude and _matches(rel, exclude):
            continue
        path = os.path.join(directory, name)
        known = None
        if tag == "l":  # a symlink: what it points to decides (followed)
            with contextlib.suppress(OSError):  # broken, or a loop: reported when read
                known = os.stat(path)
        is_dir = tag == "d" or (known is not None and S_ISDIR(known.st_mode))
        if is_dir:
            if name in VCS_DIRS or (name.startswith(".") and not hidden):
                continue
            yield from _walk_dir(Path(path), rel + "/", visited, hidden, exclude, on_skip, quiet)
        else:
            yield Path(path), rel, known


def _listing(directory: Path) -> list[str]:
    """The names in ``directory``, sorted, each as ``name + "\\0" + tag``: "l" symlink, "d"
    directory, "f" anything else, as readdir tells (no stat). Names hold no NUL, and NUL sorts
    first, so the tagged strings sort as the names do."""
    names = []
    with os.scandir(directory) as entries:
        for child in entries:
            if child.is_symlink():
                tag = "l"
            elif child.is_dir(follow_symlinks=False):
                tag = "d"
            else:
                tag = "f"
            names.append(f"{child.name}\0{tag}")
    names.sort()
    return names


def _entry(path, rel, group, name, on_skip, known=None, stat=True) -> Entry | None:
    """The Entry of one file; its size and mtime from ``known``, else from a ``stat`` (-1 when
    ``stat`` is False). A file that cannot be statted is reported and left out."""
    source = source_name(name)
    kind, compressed = _kind(path.name)
    if known is None and not stat:
        return Entry(path, rel, kind, compressed, -1, -1, group, source)
    if known is None:
        try:
            known = path.stat()
        except OSError as err:  # a broken symlink, a file removed meanwhile, a symlink loop
            on_skip(Skip(source, _unreadable_reason(err), err.strerror or str(err)))
            return None
    return Entry(path, rel, kind, compressed, known.st_size, known.st_mtime_ns, group, source)


def _unreadable_reason(err: OSError) -> str:
    return "symlink-loop" if err.errno == errno.ELOOP else "unreadable"


# --------------------------------------------------------------------------- reading bytes


def _file_blocks(entry: Entry, empty: bool = False) -> Iterator[bytes]:
    """Raw bytes of a file, decompressed when it is a .zst; errors become SourceError.
    ``empty``: a file of 0 bytes on disk raises SourceError("empty") (told by fstat)."""
    try:
        with open(entry.path, "rb") as handle:
            if empty and os.fstat(handle.fileno()).st_size == 0:
                raise SourceError("empty", "")
            if entry.compressed:
                yield from _zstd_blocks(handle)
                return
            while block := handle.read(READ_BLOCK):
                yield block
    except OSError as err:
        raise SourceError(_unreadable_reason(err), err.strerror or str(err)) from None


def _zstd_blocks(handle) -> Iterator[bytes]:
    """Decompress every frame of a zstandard stream; a truncated or corrupt one raises."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame = decompressor.decompressobj()
    seen_frame = False
    try:
        # small input reads bound the output of one call (zstd can expand a block 1000-fold)
        while block := handle.read(ZSTD_READ_BLOCK):
            while block:
                out = frame.decompress(block)
                seen_frame = True
                if out:
                    yield out
                if not frame.eof:
                    break
                block = frame.unused_data  # the next frame starts here
                frame = decompressor.decompressobj()
                seen_frame = False
    except zstandard.ZstdError as err:
        raise SourceError("corrupt-zstd", str(err)) from None
    if seen_frame and not frame.eof:
        raise SourceError("corrupt-zstd", "stream ends inside a frame (truncated)")


def _decoded(blocks: Iterable[bytes], errors: str) -> Iterator[str]:
    """UTF-8 text of byte blocks; NUL bytes mean binary content."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    offset = 0
    for block in blocks:
        nul = block.find(b"\x00")
        if nul >= 0:
            raise SourceError("binary", f"NUL byte at offset {offset + nul}")
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as err:
            raise SourceError(
                "invalid-utf8", f"at byte {offset + err.start}: {err.reason}"
            ) from None
        offset += len(block)
        if text:
            yield text
    try:
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as err:
        raise SourceError("invalid-utf8", f"truncated character at end: {err.reason}") from None
    if tail:
        yield tail


# --------------------------------------------------------------------------- documents


def read_documents(
    entries: Iterable[Entry],
    *,
    text_field: str = "text",
    errors: str = "strict",
    scratch: Path | None = None,
    on_skip: Callable[[Skip], None] = lambda skip: None,
) -> Iterator[Document]:
    """Documents of the entries, in order. ``errors``: "strict" skips invalid UTF-8,
    "replace" keeps it with U+FFFD. ``scratch``: where compressed parquet files are
    decompressed (a directory on disk; the system's temporary directory when None)."""
    pending: list[Entry] = []
    for entry in entries:
        if pending and entry.group != pending[0].group:
            yield from _repo_document(pending, errors, on_skip)
            pending = []
        if entry.group is not None:
            pending.append(entry)
        elif entry.kind == "jsonl":
            yield from _jsonl_documents(entry, text_field, errors, on_skip)
        elif entry.kind == "parquet":
            yield from _parquet_documents(entry, text_field, on_skip, scratch)
        else:
            document = _text_document(entry.source, [(entry, "")], errors, on_skip)
            if document is not None:
                yield document
    if pending:
        yield from _repo_document(pending, errors, on_skip)


def _repo_document(entries: list[Entry], errors: str, on_skip) -> Iterator[Document]:
    """One document of all usable files of a repository, each after a header line (an empty
    file is skipped as "empty" when it is read)."""
    parts = []
    for entry in entries:
        inside = source_name(entry.rel.split("/", 1)[1])
        parts.append((entry, f"==> {inside} <==\n"))
    document = _text_document(entries[0].group, parts, errors, on_skip, drop_bad_parts=True)
    if document is not None:
        yield document


def _part_text(entry: Entry, header: str, errors: str) -> Iterator[str]:
    """A file's text, after its header (if any), ending with a newline when it has a header.
    With a header, an empty file raises SourceError("empty") before the header."""
    text = _decoded(_file_blocks(entry, empty=bool(header)), errors)
    first = next(text, None)  # opens the file: its errors come before the header
    if header:
        yield header
    last = ""
    if first is not None:
        yield first
        last = first
    for last in text:
        yield last
    if header and not last.endswith("\n"):
        yield "\n"  # the next header starts on its own line


def _text_document(source, parts, errors, on_skip, drop_bad_parts=False) -> Document | None:
    """A document made of files (each after a header, possibly empty), checked end to end.

    A bad file skips the whole document, or with ``drop_bad_parts`` (repositories) only itself.
    """
    digest, nbytes, inline, usable = hashlib.sha256(), 0, [], []
    for entry, header in parts:
        saved = (digest.copy(), nbytes, None if inline is None else len(inline))
        try:
            for block in _part_text(entry, header, errors):
                data = block.encode("utf-8")
                digest.update(data)
                nbytes += len(data)
                if inline is not None:
                    inline.append(block)
                    if nbytes > MAX_INLINE_BYTES:
                        inline = None  # too large to hold: streamed again when tokenized
        except SourceError as err:
            skipped = entry.source if drop_bad_parts else source
            on_skip(Skip(skipped, err.reason, err.detail))
            if not drop_bad_parts:
                return None
            digest, nbytes, kept = saved
            if inline is not None and kept is not None:
                del inline[kept:]
            continue
        usable.append((entry, header))
    if nbytes == 0:
        if usable or not drop_bad_parts:
            on_skip(Skip(source, "empty"))
        return None
    if inline is not None:
        return Document(source, nbytes, digest.hexdigest(), "".join(inline))

    sha256 = digest.hexdigest()

    def stream() -> Iterator[str]:
        """The text read again, hashed again: DocumentChanged at the end if it differs."""
        again, size = hashlib.sha256(), 0
        try:
            for entry, header in usable:
                for block in _part_text(entry, header, errors):
                    data = block.encode("utf-8")
                    again.update(data)
                    size += len(data)
                    yield block
        except SourceError as err:
            raise DocumentChanged(source, f"second read: {err.reason} {err.detail}") from None
        if size != nbytes or again.hexdigest() != sha256:
            raise DocumentChanged(
                source,
                f"second read gave {size} bytes (sha256 {again.hexdigest()[:12]}), "
                f"first {nbytes} (sha256 {sha256[:12]})",
            )

    return Document(source, nbytes, sha256, stream=stream)


def _inline_document(source: str, text: str, on_skip) -> Document | None:
    if not text:
        on_skip(Skip(source, "empty"))
        return None
    data = text.encode("utf-8", "surrogatepass")
    return Document(source, len(data), hashlib.sha256(data).hexdigest(), text)


def _lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines (without the newline) of a byte stream. Linear: a line spread over many blocks is
    collected as a list of parts and joined once (never rebuilt block by block)."""
    parts: list[bytes] = []
    for block in blocks:
        start = 0
        while (newline := block.find(b"\n", start)) >= 0:
            if parts:
                parts.append(block[start:newline])
                parts[:] = [b"".join(parts)]
                yield parts.pop()  # held by the consumer only
            else:
                yield block[start:newline]
            start = newline + 1
        if start < len(block):
            parts.append(block[start:] if start else block)
    if parts:
        parts[:] = [b"".join(parts)]
        yield parts.pop()


def _jsonl_documents(entry: Entry, text_field: str, errors: str, on_skip) -> Iterator[Document]:
    """One document per jsonl record; a malformed line skips that line only."""
    number = 0
    try:
        for line in _lines(_file_blocks(entry)):  # not enumerate: its tuple would keep the line
            number += 1
            source = f"{entry.source}:{number}"
            if not line.strip():
                continue
            if b"\x00" in line:
                on_skip(Skip(source, "binary", "NUL byte in line"))
                continue
            # peak memory about 3x a record: each form is dropped as soon as the next exists
            try:
                decoded = line.decode("utf-8", errors)
            except UnicodeDecodeError as err:
                on_skip(Skip(source, "invalid-utf8", f"at byte {err.start}: {err.reason}"))
                continue
            del line
            try:
                record = json.loads(decoded)
            except ValueError as err:
                on_skip(Skip(source, "malformed-jsonl", str(err)))
                continue
            finally:
                del decoded
            text = record.get(text_field) if isinstance(record, dict) else None
            del record
            if not isinstance(text, str):
                on_skip(Skip(source, "malformed-jsonl", f"no string field {text_field!r}"))
                continue
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates from \\ud800-style escapes
                if errors != "replace":
                    on_skip(Skip(source, "invalid-utf8", "lone surrogate in JSON string"))
                    continue
                text = _SURROGATE.sub("\ufffd", text)
                data = text.encode("utf-8")
            if not data:
                on_skip(Skip(source, "empty"))
                continue
            yield Document(source, len(data), hashlib.sha256(data).hexdigest(), text)
            del text, data
    except SourceError as err:
        on_skip(Skip(entry.source, err.reason, err.detail))


def _parquet_documents(entry: Entry, text_field: str, on_skip, scratch) -> Iterator[Document]:
    """One document per row of the text column, read in record batches. A ``.parquet.zst`` is
    decompressed (streamed, bounded memory) into an unnamed temporary file in ``scratch`` (the
    system's temporary directory when None), deleted when its rows are read."""
    with contextlib.ExitStack() as stack:
        yield from _parquet_rows(entry, text_field, on_skip, scratch, stack)


def _parquet_rows(entry, text_field, on_skip, scratch, stack) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = entry.path
        if entry.size < 0:  # walked without stat: a broken link is "unreadable", not bad parquet
            try:
                os.stat(source)
            except OSError as err:
                raise SourceError(_unreadable_reason(err), err.strerror or str(err)) from None
        if entry.compressed:  # parquet needs random access: decompressed into a temporary file
            spill = stack.enter_context(tempfile.NamedTemporaryFile(dir=scratch))  # noqa: SIM115
            for block in _file_blocks(entry):
                spill.write(block)
            spill.flush()
            source = spill.name  # opened by arrow itself: no copies through Python
        # pre_buffer would read every requested row group ahead: memory of the whole file
        parquet = stack.enter_context(pq.ParquetFile(source, pre_buffer=False))
        if text_field not in parquet.schema_arrow.names:
            on_skip(Skip(entry.source, "bad-parquet", f"no column {text_field!r}"))
            return
        row = 0
        batches = parquet.iter_batches(batch_size=256, columns=[text_field], use_threads=False)
        for batch in batches:
            for text in batch.column(0).to_pylist():
                if text is None or isinstance(text, str):
                    document = _inline_document(f"{entry.source}#{row}", text or "", on_skip)
                    if document is not None:
                        yield document
                else:
                    on_skip(Skip(f"{entry.source}#{row}", "bad-parquet", "text is not a string"))
                row += 1
    except SourceError as err:
        on_skip(Skip(entry.source, err.reason, err.detail))
    except (OSError, pa.ArrowException) as err:
        on_skip(Skip(entry.source, "bad-parquet", str(err).splitlines()[0] if str(err) else ""))


# --------------------------------------------------------------------------- pieces


def split_pieces(
    blocks: Iterable[str], target: int = PIECE_CHARS, limit: int = MAX_PIECE_CHARS
) -> Iterator[str]:
    """Re-cut text blocks into pieces that depend on the text only, not on the blocks.

    A piece ends at the first newline at or after ``target`` characters, or after ``limit``
    characters when there is none. Tokenizing pieces independently keeps decoding lossless and
    the output the same whatever the read sizes or the number of workers.
    """
    buffer = ""
    for block in blocks:
        buffer = buffer + block if buffer else block
        start = 0
        while len(buffer) - start >= target:
            newline = buffer.find("\n", start + target - 1, start + limit)
            if newline >= 0:
                cut = newline + 1
            elif len(buffer) - start >= limit:
                cut = start + limit
            else:
                break
            yield buffer[start:cut]
            start = cut
        buffer = buffer[start:]
    if buffer:
        yield buffer
