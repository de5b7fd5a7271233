"""``LongNetTokenizer``: longnet's lossless SentencePiece tokenizer as a transformers tokenizer.

Encoding is ``encode_lossless`` (the ids ``longnet tokenize`` writes, no BOS or EOS added) and
decoding gives back exactly the bytes the ids stand for, so ``decode(encode(text)) == text``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizer

from longnet_cli.data.token_bytes import TokenBytes
from longnet_cli.data.tokenizer import encode_lossless, load_tokenizer

VOCAB_FILES = {"vocab_file": "tokenizer.model"}


class LongNetTokenizer(PreTrainedTokenizer):
    """The SentencePiece model of a longnet corpus (``tokenizer.model``)."""

    vocab_files_names = VOCAB_FILES
    _auto_class = "AutoTokenizer"  # save_pretrained writes this file and its auto_map
    model_input_names = ["input_ids", "attention_mask"]  # noqa: RUF012 (transformers attribute)

    def __init__(
        self,
        vocab_file: str,
        eos_token: str | None = "</s>",
        unk_token: str | None = "<unk>",
        pad_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_file = str(vocab_file)
        self.processor = load_tokenizer(vocab_file)
        self.token_bytes = TokenBytes(self.processor)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(eos_token=eos_token, unk_token=unk_token, pad_token=pad_token, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.processor.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        ids = encode_lossless(self.processor, [text])[0]
        return [self.processor.id_to_piece(i) for i in ids]

    def _convert_token_to_id(self, token: str) -> int:
        return self.processor.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.processor.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """The exact text of the pieces (byte pieces joined before UTF-8 decoding)."""
        data = b"".join(self.token_bytes(self.processor.piece_to_id(t)) for t in tokens)
        return data.decode("utf-8", errors="replace")

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None):
        """Copy ``tokenizer.model`` into ``save_directory``."""
        name = f"{filename_prefix}-tokenizer.model" if filename_prefix else "tokenizer.model"
        target = Path(save_directory) / name
        if Path(self.vocab_file).resolve() != target.resolve():
            shutil.copyfile(self.vocab_file, target)
        return (str(target),)
