"""The exact bytes each token id of a lossless SentencePiece model stands for.

A byte-fallback piece ``<0xNN>`` is that one byte; an ordinary piece is the UTF-8 text of the
piece with U+2581 read as a space; a control or unknown piece (EOS, ``<unk>``) is no text at all.
Joined, the bytes of a document's ids are exactly its source bytes: ``longnet generate`` streams
them, the exported tokenizer decodes with them, and ``longnet eval`` counts them for bits per byte.
"""

from __future__ import annotations

from typing import Any


class TokenBytes:
    """The exact bytes each token id stands for (byte tokens, U+2581 as a space)."""

    def __init__(self, processor: Any) -> None:
        from longnet_cli.data.tokenizer import SPACE_SYMBOL

        self.table: list[bytes] = []
        for token in range(processor.get_piece_size()):
            piece = processor.id_to_piece(token)
            if processor.is_byte(token):
                self.table.append(bytes([int(piece[3:5], 16)]))  # "<0xNN>"
            elif processor.is_control(token) or processor.is_unknown(token):
                self.table.append(b"")
            else:
                self.table.append(piece.replace(SPACE_SYMBOL, " ").encode())

    def __call__(self, token: int) -> bytes:
        """The bytes of ``token``; an id outside the vocabulary stands for none."""
        return self.table[token] if 0 <= token < len(self.table) else b""

    def lengths(self) -> list[int]:
        """The byte length of every token id, in id order."""
        return [len(data) for data in self.table]
