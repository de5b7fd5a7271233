"""``longnet tokenize``: a corpus into memory-mapped token shards with a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from longnet_cli.cli.common import (
    CONTEXT,
    exclude_option,
    existing_tokenizer_option,
    force_flag,
    json_flag,
    length_option,
    quiet_flag,
    shown_option,
    workers_option,
)


@click.command("tokenize", context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--stdlib",
    is_flag=True,
    help="Tokenize this interpreter's standard library source tree (about 30 MB of code; "
    "site-packages, bytecode and binaries left out) instead of PATHS: a built-in corpus.",
)
@click.option(
    "--site-packages",
    "site_packages",
    is_flag=True,
    help="Tokenize this environment's installed packages' Python source (its site-packages: "
    "*.py files unless --include says otherwise; bytecode, binaries and .dist-info metadata "
    "left out) instead of PATHS: the larger built-in corpus (about 200 MB in 12,300 files "
    "with longnet's test extras).",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Output directory (created; rebuilt only when the corpus or options change).",
)
@shown_option(
    "--group",
    type=click.Choice(["file", "repo"]),
    default="file",
    help="repo: each immediate subdirectory of an input is ONE document, its files "
    "concatenated in sorted order after '==> path <==' headers.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files matching (relative path, or file name for patterns without '/').",
)
@exclude_option("Skip matching files and folders.")
@click.option("--hidden", is_flag=True, help="Also walk hidden directories (VCS folders never).")
@shown_option(
    "--text-field",
    default="text",
    help="Field of jsonl records / column of parquet files holding the text.",
)
@shown_option(
    "--errors",
    type=click.Choice(["strict", "replace"]),
    default="strict",
    help="Invalid UTF-8: skip the document, or keep it with U+FFFD.",
)
@existing_tokenizer_option("Reuse this SentencePiece model instead of training one.")
@shown_option(
    "--vocab-size",
    default=32000,
    type=click.IntRange(min=1),
    help="Vocabulary of the trained tokenizer.",
)
@length_option(
    "--sample-bytes",
    default="32M",
    help="Text sampled from the corpus to train the tokenizer (K/M/G suffixes).",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the tokenizer sample.")
@length_option("--shard-tokens", default="256M", help="Tokens per shard file at most.")
@shown_option(
    "--holdout",
    type=float,
    default=0.01,
    metavar="FRACTION",
    help="Fraction of documents held out of training, chosen by a hash of their content (the "
    "same document always lands on the same side, however the corpus grows or files are "
    "renamed); 0 holds none out. If it selects none, the document with the smallest hash is "
    "held out.",
)
@workers_option(
    os.cpu_count() or 1,
    show_default="CPU count",
    help="Encoding threads; output is the same for any.",
)
@force_flag("Rebuild even when the output is up to date.")
@quiet_flag()
@json_flag("the summary")
def tokenize(paths, stdlib, site_packages, out, group, include, exclude, hidden, text_field,
             errors, tokenizer, vocab_size, sample_bytes, seed, shard_tokens, holdout, workers,
             force, quiet, as_json) -> None:  # fmt: skip
    """Tokenize corpus PATHS (directories walked recursively, or files) into --out.

    Reads text, markdown and source files (one document each), .jsonl and .parquet (one per
    record), and .zst-compressed versions of these. Binary files, invalid UTF-8, empty files,
    corrupt zstd streams and malformed jsonl lines are skipped and counted, never fatal.
    Writes shard-NNNNN.bin, documents.parquet, tokenizer.model, and manifest.json last, into
    a new version (--out/versions/N) that one rename makes current; a failed run leaves the
    previous version as it was, and a training run keeps reading the version it opened.
    Re-running on an unchanged corpus writes nothing.

    Every document is assigned to the train or the held-out split (--holdout) by its content
    hash; training never reads held-out documents, evaluation scores them.

    --stdlib instead of PATHS: the built-in corpus, present wherever Python is. With
    --group repo each standard-library package is one long document (top-level modules stay
    documents of their own), e.g. --stdlib --group repo --include '*.py'.

    --site-packages instead of PATHS: the installed packages' Python source, the larger
    built-in corpus; --include replaces its default '*.py' (e.g. --include '*.py' --include
    '*.pyi', or --include 'pluggy/*.py' for one package); with --group repo each package is
    one document.
    """
    from longnet_cli.core.errors import InputError
    from longnet_cli.data.sources import (
        SITE_PACKAGES_INCLUDES,
        site_packages_excludes,
        site_packages_paths,
        stdlib_excludes,
        stdlib_path,
    )
    from longnet_cli.tokenize import TokenizeOptions, tokenize_corpus

    if int(stdlib) + int(site_packages) + int(bool(paths)) != 1:
        raise click.UsageError("give corpus PATHS, --stdlib or --site-packages (one of the three)")
    if site_packages:
        paths = tuple(site_packages_paths())
        if not paths:
            raise InputError("--site-packages: this interpreter has no site-packages directory; "
                             "give corpus PATHS instead")  # fmt: skip
        include = include or SITE_PACKAGES_INCLUDES
        exclude = (*site_packages_excludes(), *exclude)
    if stdlib:
        paths = (stdlib_path(),)
        if not paths[0].is_dir():
            raise InputError(f"--stdlib: this interpreter has no standard library source tree "
                             f"at {paths[0]}; give corpus PATHS instead")  # fmt: skip
        exclude = (*stdlib_excludes(), *exclude)
    options = TokenizeOptions(
        paths=tuple(paths), out=out, group=group, include=tuple(include),
        exclude=tuple(exclude), hidden=hidden, text_field=text_field, errors=errors,
        tokenizer=tokenizer, vocab_size=vocab_size, sample_bytes=sample_bytes, seed=seed,
        shard_tokens=shard_tokens, holdout=holdout, workers=workers, force=force,
        progress=not quiet,
    )  # fmt: skip
    result = tokenize_corpus(options)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    seconds = max(result.seconds, 1e-9)
    per_token = result.bytes / result.tokens if result.tokens else 0.0
    if result.up_to_date:
        click.echo(f"{out} is up to date: {result.documents:,} documents, {result.tokens:,} "
                   "tokens; nothing written (--force rebuilds)")  # fmt: skip
    else:
        click.echo(
            f"tokenized {result.documents:,} documents, {result.bytes / 1e6:,.1f} MB into "
            f"{result.tokens:,} tokens ({per_token:.2f} bytes/token) in {result.shards} "
            f"shard(s) at {out}\n"
            f"{seconds:.1f} s: {result.bytes / 1e6 / seconds:.2f} MB/s, "
            f"{result.tokens / seconds:,.0f} tokens/s; vocabulary {result.vocab_size:,}"
            + (" (trained)" if result.trained_tokenizer else "")
        )
    click.echo(_splits_line(result))
    if result.kept_versions:
        kept = ", ".join(f"the files directly in {out}" if name == "." else str(out / name)
                         for name in result.kept_versions)  # fmt: skip
        click.echo(f"kept {kept}: still open by a reader (a later run removes it once closed)")
    if result.skipped:
        listed = ", ".join(f"{reason} {count}" for reason, count in result.skipped.items())
        click.echo(f"skipped: {listed} (details in {out / 'manifest.json'})")


def _splits_line(result) -> str:
    """One line: documents and tokens per split, and how the held-out ones were chosen."""
    if not result.splits:
        return "split: none recorded (all documents train)"
    train, heldout = result.splits["train"], result.splits["heldout"]
    line = (
        f"split: {train['documents']:,} train documents ({train['tokens']:,} tokens), "
        f"{heldout['documents']:,} held out ({heldout['tokens']:,} tokens; --holdout "
        f"{result.holdout:g})"
    )
    if result.heldout_fallback:
        line += "; the fraction selected none, so the smallest content hash was held out"
    elif result.holdout > 0 and heldout["documents"] == 0:
        line += "; nothing held out (a single document, or every document has the same content)"
    elif result.holdout == 0:
        line += "; nothing held out: evaluation will score training documents"
    return line
