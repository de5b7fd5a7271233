"""The model card (README.md) of an exported model: what it is, how to load it, how it was
trained, on what, how it scores on held-out documents, and the whole recipe.

Everything comes from files: the checkpoint's state.json, the corpus's manifest.json (when the
corpus is still where the recipe says; otherwise the card says so), and the run's latest
held-out evaluation at or before the exported step: evaluation during training
(``metrics.jsonl``) or ``longnet eval --json`` (``eval.json`` in the run directory or beside it,
as ``longnet runs`` finds it); on equal steps the full ``longnet eval`` wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longnet_cli import __version__
from longnet_cli.artifacts.layout import EVAL_FILE, METRICS_FILE, metrics_path, run_of_checkpoint
from longnet_cli.core.lengths import format_length

PAPER = (
    'Ding et al., 2023, "LongNet: Scaling Transformers to 1,000,000,000 Tokens", arXiv 2307.02486'
)


@dataclass
class HeldoutEvaluation:
    """One held-out evaluation: its step, where it was read, and a row per context."""

    step: int
    source: str  # "metrics.jsonl" or an eval.json path
    documents: int | None
    rows: list[dict[str, Any]]  # context, tokens, loss, ppl, bpb


def model_card(checkpoint, recipe, name: str, vocab_size: int, parameters: int) -> str:
    """The README.md of an export of ``checkpoint`` (a ``checkpoints.Checkpoint``)."""
    model = recipe.model
    reach = max(model.segment_lengths)
    state = checkpoint.state
    branches = ", ".join(
        f"({format_length(w)}, {r})" for w, r in zip(model.segment_lengths, model.dilation_rates)
    )
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags:",
        "- longnet",
        "- dilated-attention",
        "---",
        "",
        f"# {name}",
        "",
        f"A causal language model on LongNet's dilated attention ({PAPER}), trained with "
        f"longnet-cli: {parameters:,} parameters, {model.depth} layers of width "
        f"{model.dim}, {model.heads} heads of {model.dim_head}, {model.positions} positions, "
        f"branches (segment length, dilation rate) {branches}. Its reach is "
        f"{format_length(reach)} tokens: a token reads only inside its block of {reach:,} "
        f"tokens. Vocabulary: {vocab_size:,} tokens (lossless SentencePiece, `tokenizer.model`).",
        "",
        "## Use",
        "",
        "The modeling files here import longnet: install it with its `hf` extra "
        "(`pip install 'longnet-cli[hf]'`). Nothing else is needed: no run directory, no "
        "network.",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)',
        'ids = tokenizer("def main(", return_tensors="pt").input_ids',
        "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0]))",
        "```",
        "",
        "`generate` decodes with longnet's cache bounded by the branches (per layer at most "
        "sum_i heads * ceil(w_i / r_i) keys, whatever the context). Rows must not be padded. "
        f"longnet reads this directory as a checkpoint: `longnet generate {name} --prompt ...`, "
        f"`longnet eval {name}`.",
        "",
        "## Training",
        "",
        f"- steps: {checkpoint.step:,} of {recipe.train.steps:,}",
        f"- tokens: {_int(state.get('tokens'))} (sequences of {recipe.train.seq_len:,} tokens)",
        f"- last logged training loss: {_float(state.get('loss'))}",
        f"- exported from `{checkpoint.path}` by longnet {__version__}",
        "",
        "## Corpus",
        "",
        *_corpus_lines(Path(recipe.data.shards), state.get("tokenizer_sha256")),
        "",
        "## Held-out evaluation",
        "",
        *_evaluation_lines(run_of_checkpoint(checkpoint.path), checkpoint.step),
        "",
        "## Recipe",
        "",
        "The resolved recipe of the run (`longnet train` takes it as it is):",
        "",
        "```yaml",
        recipe.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _corpus_lines(shards: Path, tokenizer_sha256: str | None) -> list[str]:
    from longnet_cli.data.format.errors import CorpusError
    from longnet_cli.data.format.manifest import read_manifest

    try:
        manifest = read_manifest(shards)
    except (CorpusError, OSError) as err:
        return [
            f"`{shards}`: not reachable when this model was exported ({err}), so its document "
            "and token counts are not recorded here."
        ]
    if tokenizer_sha256 and manifest["tokenizer_sha256"] != tokenizer_sha256:
        return [
            f"`{shards}` now holds data of another tokenizer (sha256 "
            f"{manifest['tokenizer_sha256']}, the model's is {tokenizer_sha256}): it was "
            "re-tokenized after training, and its counts would not describe this model's data."
        ]
    lines = [
        f"`{shards}`: {manifest['documents']:,} documents, {manifest['tokens']:,} tokens "
        f"(end-of-document tokens included), {manifest['bytes']:,} bytes of text."
    ]
    splits = manifest.get("splits")
    if isinstance(splits, dict):
        for split, words in (("train", "training"), ("heldout", "held out of training")):
            entry = splits.get(split)
            if isinstance(entry, dict):
                lines.append(
                    f"- {words}: {_count(entry.get('documents'), 'document')}, "
                    f"{_count(entry.get('tokens'), 'token')}"
                )
    return lines


def _evaluation_lines(run_dir: Path | None, step: int) -> list[str]:
    if run_dir is None:
        return ["None recorded: the checkpoint lies in no run directory."]
    evaluation = latest_heldout_evaluation(run_dir, step)
    if evaluation is None:
        return [
            f"None recorded in `{run_dir}` up to step {step:,} (set `eval.every` in the recipe, "
            "or run `longnet eval RUN --json RUN/eval.json`)."
        ]
    documents = "" if evaluation.documents is None else f" on {evaluation.documents:,} documents"
    lines = [
        f"Step {evaluation.step:,}{documents} held out of training, from `{evaluation.source}`; "
        "loss in nats per token.",
        "",
        "| context | tokens | loss | perplexity | bits per byte |",
        "|--:|--:|--:|--:|--:|",
    ]
    for row in evaluation.rows:
        lines.append(
            f"| {format_length(row['context'])} | {_int(row.get('tokens'))} | "
            f"{_float(row.get('loss'))} | {_float(row.get('ppl'), 2)} | "
            f"{_float(row.get('bpb'))} |"
        )
    return lines


def latest_heldout_evaluation(run_dir: Path, step: int) -> HeldoutEvaluation | None:
    """The run's latest held-out evaluation at or before ``step`` (see the module notes)."""
    from longnet_cli.artifacts.runs import read_metrics

    found: list[tuple[int, int, HeldoutEvaluation]] = []  # (step, rank, evaluation)
    for record in read_metrics(metrics_path(run_dir)):
        figures = record.get("eval")
        if isinstance(figures, dict) and figures.get("split") == "heldout":
            contexts = figures.get("contexts")
            rows = [
                {"context": int(context), **values}
                for context, values in (contexts.items() if isinstance(contexts, dict) else [])
                if str(context).isdigit() and isinstance(values, dict)
            ]
            if rows and isinstance(record.get("step"), int):
                rows.sort(key=lambda row: row["context"])
                found.append((record["step"], 0, HeldoutEvaluation(
                    record["step"], METRICS_FILE, figures.get("documents"), rows)))  # fmt: skip
    for path in (run_dir / EVAL_FILE, run_dir.parent / EVAL_FILE):
        evaluation = _from_eval_file(path, run_dir)
        if evaluation is not None:
            found.append((evaluation.step, 1, evaluation))
            break
    found = [item for item in found if item[0] <= step]
    return max(found, key=lambda item: item[:2])[2] if found else None


def _from_eval_file(path: Path, run_dir: Path) -> HeldoutEvaluation | None:
    """This run's figures in a ``longnet eval --json`` report, when they are held-out ones."""
    import json

    from longnet_cli.artifacts.runs import belongs_to

    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("split") != "heldout":
        return None
    runs = report.get("runs") if isinstance(report.get("runs"), list) else []
    for run in runs:
        if not isinstance(run, dict) or not belongs_to(run.get("checkpoint"), path, run_dir):
            continue
        rows = [
            {"context": entry["context"], **entry["overall"]}
            for entry in run.get("contexts") or []
            if isinstance(entry, dict) and isinstance(entry.get("context"), int)
            and isinstance(entry.get("overall"), dict)
        ]  # fmt: skip
        if rows and isinstance(run.get("step"), int):
            return HeldoutEvaluation(run["step"], str(path), report.get("documents"), rows)
    return None


def _int(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "-"


def _count(value: Any, noun: str) -> str:
    return f"{_int(value)} {noun}{'' if value == 1 else 's'}"


def _float(value: Any, digits: int = 4) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "-"
