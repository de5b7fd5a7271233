"""Stage: checkpoint + prompt -> a sampled continuation, streamed as it is produced.

The model decodes with its branch-bounded key/value cache (``model/decode.py``): per layer only
the current segment's selected keys of each branch, whatever the prompt's length, and the prompt
is prefilled only from the block of its last token on (the whole prompt with smeared keys).

The tokenizer is lossless, so the continuation is exactly the bytes its tokens encode. Bytes
are handed on as soon as they are final: a partial UTF-8 sequence waits for its last byte, and
bytes that could begin ``stop`` wait until they do not (or do: then the output ends before it).

Tokenizer: the checkpoint's own copy of ``tokenizer.model`` (written since generation exists),
else the run's corpus tokenizer, else ``--tokenizer``; whichever is used must match the sha256
the checkpoint recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longnet_cli.core.errors import InputError, LongnetError
from longnet_cli.core.memory import peak_rss_bytes
from longnet_cli.data.token_bytes import TokenBytes

STOP_REASONS = ("eos", "stop", "max_new_tokens")


@dataclass
class GenerateOptions:
    """What to continue and how to sample (see ``longnet generate --help``)."""

    checkpoint: Path | None = None
    prompt: str | None = None
    prompt_file: Path | None = None
    doc: str | None = None  # a document id, "heldout" or "heldout:K"
    data: Path | None = None
    prompt_tokens: int | None = None
    max_new_tokens: int = 256
    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: str | None = None
    device: str = "auto"
    tokenizer: Path | None = None
    runs_dir: Path = Path("runs")
    compile: bool = False  # torch.compile the per-layer modules (train.compiled)


@dataclass
class GenerateResult:
    """A continuation and what it cost."""

    checkpoint: str
    step: int
    prompt_tokens: int
    prefill_tokens: int  # the prompt's tail that later positions can still read
    tokens: list[int]
    text: str  # the continuation's bytes as UTF-8, invalid sequences replaced
    stop_reason: str
    prefill_seconds: float
    decode_seconds: float
    cache_bytes: int
    cache_keys_per_layer: int
    cache_bound_per_layer: int
    dense_cache_bytes: int  # what a dense model's cache would hold after the same context
    peak_memory_bytes: int
    device: str
    precision: str
    chosen: list[str] = field(default_factory=list)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = max(len(self.tokens) - 1, 0)  # the first token comes from the prefill
        return steps / self.decode_seconds if self.decode_seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "step": self.step,
            "prompt_tokens": self.prompt_tokens,
            "prefill_tokens": self.prefill_tokens,
            "tokens": self.tokens,
            "text": self.text,
            "stop_reason": self.stop_reason,
            "prefill_seconds": self.prefill_seconds,
            "decode_seconds": self.decode_seconds,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "cache_bytes": self.cache_bytes,
            "cache_keys_per_layer": self.cache_keys_per_layer,
            "cache_bound_per_layer": self.cache_bound_per_layer,
            "dense_cache_bytes": self.dense_cache_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "device": self.device,
            "precision": self.precision,
            "chosen": self.chosen,
        }


class TextStream:
    """Bytes in, final bytes out: holds back a partial UTF-8 sequence and a possible start of
    ``stop``; ``stopped`` once ``stop`` appeared (the output then ends before it)."""

    def __init__(self, stop: str | None = None) -> None:
        self.stop = stop.encode() if stop else b""
        self.pending = b""
        self.stopped = False

    def feed(self, data: bytes) -> bytes:
        """The bytes of ``data`` (after those held back) that are final now."""
        if self.stopped:
            return b""
        self.pending += data
        if self.stop and (found := self.pending.find(self.stop)) >= 0:
            self.stopped = True
            out, self.pending = self.pending[:found], b""
            return out
        cut = min(_utf8_complete(self.pending), len(self.pending) - self._stop_prefix())
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def finish(self) -> bytes:
        """Whatever is still held back (an incomplete sequence is written as it is)."""
        out, self.pending = self.pending, b""
        return out

    def _stop_prefix(self) -> int:
        """Length of the longest end of ``pending`` that begins ``stop``."""
        for size in range(min(len(self.stop) - 1, len(self.pending)), 0, -1):
            if self.stop.startswith(self.pending[-size:]):
                return size
        return 0


def _utf8_complete(data: bytes) -> int:
    """Length of ``data`` without a trailing incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for its lead
            continue
        need = (
            2
            if 0xC0 <= byte < 0xE0
            else 3
            if 0xE0 <= byte < 0xF0
            else 4
            if 0xF0 <= byte < 0xF8
            else 1
        )
        return len(data) - back if need > back else len(data)
    return len(data)


def generate(
    options: GenerateOptions,
    on_bytes: Callable[[bytes], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Continue a prompt with a checkpoint's model; ``on_bytes`` receives the continuation's
    bytes as they become final. Raises InputError for bad input (exit code 2)."""
    import torch

    from longnet_cli.artifacts.loading import find_checkpoint_tokenizer
    from longnet_cli.artifacts.resolve import resolve_argument
    from longnet_cli.config import Recipe
    from longnet_cli.runtime import keep_freed_memory, resolve_device

    note = on_note or (lambda message: None)
    _check_options(options)
    chosen: list[str] = []
    checkpoint = resolve_argument(options.checkpoint, options.runs_dir, chosen)
    for line in chosen:
        note(f"using {line}")
    recipe = Recipe.from_saved(checkpoint.state["recipe"], source=str(checkpoint.path))
    path, processor, origin = find_checkpoint_tokenizer(checkpoint, recipe, options.tokenizer)
    tokenizer_source = f"{path} ({origin})"
    chosen.append(f"tokenizer: {tokenizer_source}")
    prompt = _prompt_tokens(options, processor, recipe, checkpoint, note, chosen)
    device = resolve_device(options.device, auto=True)
    if device.type == "cpu" and recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    keep_freed_memory()
    model = _load_model(checkpoint, recipe, device)
    if options.compile:
        from longnet_cli.train.compiled import compile_for_decoding, eager_instead

        warning = eager_instead(device, "--compile")
        if warning is None:
            compile_for_decoding(model)
        else:
            note(warning)
    precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    from longnet_cli.model.decode import prefill_start

    tokens = torch.tensor(prompt, dtype=torch.long, device=device)[None]  # (1, n)
    prefill_tokens = len(prompt) - prefill_start(
        model.config.segment_lengths, len(prompt), model.config.smeared_keys
    )
    which = "all of it: smeared keys" if model.config.smeared_keys else "its last token's block"
    note(
        f"generate: prompt {len(prompt):,} tokens, prefill {prefill_tokens:,} ({which}), "
        f"up to {options.max_new_tokens:,} new tokens"
    )
    eos_id = processor.eos_id()
    token_bytes, text = TokenBytes(processor), TextStream(options.stop)
    emit = on_bytes or (lambda data: None)
    generator = torch.Generator(device).manual_seed(options.seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    new: list[int] = []
    written = bytearray()
    stop_reason = "max_new_tokens"
    start = time.perf_counter()
    prefill_seconds, cache = 0.0, None
    with autocast:
        steps = model.stream(
            tokens, options.max_new_tokens, temperature=options.temperature,
            top_k=options.top_k, top_p=options.top_p, generator=generator,
        )  # fmt: skip
        for next_tokens, step_cache in steps:
            cache = step_cache
            if not new:
                _sync(device)
                prefill_seconds = time.perf_counter() - start
                start = time.perf_counter()
            token = int(next_tokens[0])
            new.append(token)
            if token == eos_id:
                stop_reason = "eos"
                break
            out = text.feed(token_bytes(token))
            written += out
            emit(out)
            if text.stopped:
                stop_reason = "stop"
                break
    _sync(device)
    decode_seconds = time.perf_counter() - start if new else 0.0
    rest = text.finish() if not text.stopped else b""
    written += rest
    emit(rest)
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    else:
        peak = peak_rss_bytes()
    config = model.config
    element = next(model.parameters()).element_size() if precision == "fp32" else 2
    dense = 2 * config.depth * config.heads * config.dim_head * element
    context = len(prompt) + len(new)
    return GenerateResult(
        checkpoint=str(checkpoint.path),
        step=checkpoint.step,
        prompt_tokens=len(prompt),
        prefill_tokens=prefill_tokens,
        tokens=new,
        text=bytes(written).decode("utf-8", errors="replace"),
        stop_reason=stop_reason,
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        cache_bytes=cache.nbytes() if cache is not None else 0,
        cache_keys_per_layer=cache.keys_per_layer() if cache is not None else 0,
        cache_bound_per_layer=cache.max_keys_per_layer() if cache is not None else 0,
        dense_cache_bytes=dense * context,
        peak_memory_bytes=peak,
        device=str(device),
        precision=precision,
        chosen=chosen,
    )


def _check_options(options: GenerateOptions) -> None:
    given = [
        name
        for name, value in (
            ("--prompt", options.prompt),
            ("--prompt-file", options.prompt_file),
            ("--doc", options.doc),
        )
        if value is not None
    ]
    if not given:
        raise InputError("no prompt: give --prompt TEXT, --prompt-file FILE or --doc ID")
    if len(given) > 1:
        raise InputError(f"give one prompt, not {' and '.join(given)}")
    if options.data is not None and options.doc is None:
        raise InputError("--data names the corpus of --doc; give --doc ID with it")
    if options.prompt_tokens is not None and options.prompt_tokens < 1:
        raise InputError(f"--prompt-tokens must be positive, got {options.prompt_tokens}")
    if options.max_new_tokens < 0:
        raise InputError(f"--max-new-tokens must be >= 0, got {options.max_new_tokens}")
    if options.temperature < 0:
        raise InputError(f"--temperature must be >= 0, got {options.temperature}")
    if options.top_k < 0:
        raise InputError(f"--top-k must be >= 0 (0: off), got {options.top_k}")
    if not 0.0 < options.top_p <= 1.0:
        raise InputError(f"--top-p must be in (0, 1], got {options.top_p}")
    if options.stop == "":
        raise InputError("--stop must not be empty")


def _prompt_tokens(options, processor, recipe, checkpoint, note, chosen) -> list[int]:
    from longnet_cli.data.tokenizer import encode_lossless

    if options.doc is not None:
        tokens = _document_tokens(options, recipe, checkpoint, note, chosen)
    else:
        if options.prompt_file is not None:
            try:
                text = Path(options.prompt_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"--prompt-file {options.prompt_file}: {err}") from None
        else:
            text = options.prompt
        if not text:
            raise InputError("the prompt is empty")
        tokens = encode_lossless(processor, [text])[0]
    if options.prompt_tokens is not None:
        tokens = tokens[: options.prompt_tokens]
    if not tokens:
        raise InputError("the prompt is empty")
    return [int(t) for t in tokens]


def _document_tokens(options, recipe, checkpoint, note, chosen) -> list[int]:
    from longnet_cli.data.format.errors import CorpusError
    from longnet_cli.data.format.reader import TokenizedCorpus

    data = Path(options.data or recipe.data.shards)
    try:
        corpus = TokenizedCorpus.open(data)
    except (CorpusError, FileNotFoundError, OSError) as err:
        raise InputError(f"--data {data}: {err}") from None
    expected = checkpoint.state.get("tokenizer_sha256")
    if expected and corpus.manifest.get("tokenizer_sha256") != expected:
        raise InputError(
            f"{data} was tokenized with tokenizer {corpus.manifest.get('tokenizer_sha256')}, "
            f"but {checkpoint.path} was trained with {expected}"
        )
    doc_id = _document_id(options.doc, corpus, data)
    if corpus.has_splits and not corpus.heldout_mask()[doc_id]:
        note(f"warning: document {doc_id} of {data} is a training document")
    chosen.append(f"document: {doc_id} of {data}")
    note(f"using document {doc_id} of {data}")
    return corpus.document(doc_id).tolist()


def _document_id(doc: str, corpus, data: Path) -> int:
    """A document id from ``doc``: an id, "heldout" (the first held-out document) or
    "heldout:K" (the K-th held-out document, from 0)."""
    if doc == "heldout" or doc.startswith("heldout:"):
        index_text = doc.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise InputError(f"--doc {doc!r}: expected heldout:K with K a number")
        heldout = corpus.split_documents("heldout") if corpus.has_splits else []
        index = int(index_text)
        if index >= len(heldout):
            raise InputError(
                f"--doc {doc}: {data} has {len(heldout)} held-out documents"
                + ("" if corpus.has_splits else " (tokenized without a held-out split)")
            )
        return int(heldout[index])
    if not doc.isdigit():
        raise InputError(f"--doc {doc!r}: expected a document id, heldout or heldout:K")
    doc_id = int(doc)
    if doc_id >= corpus.num_documents:
        raise InputError(
            f"--doc {doc_id}: unknown document ({data} has documents 0..{corpus.num_documents - 1})"
        )
    return doc_id


def _load_model(checkpoint, recipe, device):
    """The checkpoint's model on ``device``, its weights verified against state.json's sha256
    first (a flipped bit loads silently); a file that does not load is named."""
    from longnet_cli.artifacts.layout import WEIGHTS_FILE
    from longnet_cli.artifacts.loading import WeightsLoadError, load_checkpoint_model

    try:
        return load_checkpoint_model(checkpoint, recipe, device=device)
    except WeightsLoadError as err:  # a truncated or foreign file: name it
        weights, cause = checkpoint.path / WEIGHTS_FILE, err.__cause__
        raise LongnetError(f"{weights}: cannot load the model weights: {cause}") from cause


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
