"""``longnet inspect``: totals and full verification of a tokenized corpus; one document's text."""

from __future__ import annotations

import json
from pathlib import Path

import click

from longnet_cli.cli.common import CONTEXT, directory_path, json_flag
from longnet_cli.core.errors import LongnetError


@click.command("inspect", context_settings=CONTEXT)
@click.argument("directory", type=directory_path())
@click.option(
    "--doc",
    "doc_id",
    type=int,
    default=None,
    metavar="ID",
    help="Print document ID decoded to text on stdout (the totals go to stderr).",
)
@json_flag("the report")
def inspect(directory: Path, doc_id: int | None, as_json: bool) -> None:
    """Show totals of the tokenized corpus DIRECTORY and verify it completely.

    Shows documents and tokens (EOS included) per split: train, and held out of training.
    Checks the sha256 of every shard, of tokenizer.model, of documents.parquet and of the
    manifest itself, that every token id is below the vocabulary size and that
    documents.parquet matches the token stream. Exit code 1 when a problem is found (a damaged
    manifest.json included), 2 when DIRECTORY is not a tokenized corpus.
    """
    from longnet_cli.inspect import inspect_corpus

    report = inspect_corpus(directory, doc_id=doc_id)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        to_stderr = doc_id is not None  # stdout carries only the document's text
        for line in _summary_lines(report):
            click.echo(line, err=to_stderr)
        if report.text is not None:
            click.echo(report.text, nl=False)
    if report.problems:
        count = len(report.problems)
        raise LongnetError(f"{count} problem{'s' if count > 1 else ''} found in {directory}")


def _summary_lines(report) -> list[str]:
    lines = [
        f"corpus      {report.directory}"
        + (f" (current version: {report.version})" if report.version else ""),
        f"documents   {report.documents:,}",
        f"tokens      {report.tokens:,} (EOS included)",
        f"bytes       {report.bytes:,}",
        f"shards      {report.shards}",
        f"bytes/token {report.bytes_per_token:.2f} (EOS excluded)",
        f"vocab       {report.vocab_size:,} ({report.dtype})",
        f"tokenizer   sha256 {report.tokenizer_sha256}",
        *_split_lines(report.splits),
    ]
    if report.skipped:
        skipped = ", ".join(
            f"{reason} {count:,}" for reason, count in sorted(report.skipped.items())
        )
        lines.append(f"skipped     {skipped}")
    else:
        lines.append("skipped     none")
    lines.extend(f"NOTE: {note}" for note in report.notes)
    if report.ok:
        lines.append(f"OK: all {report.shards} shards verified")
    else:
        lines.extend(f"PROBLEM: {problem}" for problem in report.problems)
    return lines


def _split_lines(splits) -> list[str]:
    if splits is None:
        return ["split       none recorded (tokenized before held-out splits: all train)"]
    lines = []
    for name, label in (("train", "trained on"), ("heldout", "never trained on")):
        figures = splits.get(name, {})
        lines.append(
            f"{name:<11} {figures.get('documents', 0):,} documents, "
            f"{figures.get('tokens', 0):,} tokens ({label})"
        )
    note = f"holdout     {splits.get('holdout', 0):g} of documents, by content hash"
    if splits.get("fallback"):
        note += " (selected none: the smallest hash was held out)"
    lines.append(note)
    return lines
