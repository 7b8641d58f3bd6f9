"""Tokenizers the text datasets share: built-in byte and character ones, or a local folder.

`byte`: UTF-8 bytes are ids 0..255; with specials, PAD=256, CLS=257, SEP=258 follow (vocab 259).
`char`: one id per distinct character of the text it is built from, in sorted order.
A folder: a Hugging Face tokenizer saved with `save_pretrained`, loaded with
local_files_only (nothing is ever fetched from a hub; transformers is imported only then).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradloop.errors import ConfigError
from gradloop.extras import require


class ByteTokenizer:
    """UTF-8 bytes as token ids; `specials` adds PAD, CLS and SEP after the 256 bytes."""

    def __init__(self, specials: bool = False) -> None:
        self.specials = specials
        self.pad_id, self.cls_id, self.sep_id = 256, 257, 258
        self.vocab_size = 259 if specials else 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CharTokenizer:
    """One id per character seen in `text` (sorted); with specials, PAD, CLS, SEP come first."""

    def __init__(self, text: str, specials: bool = False) -> None:
        self.specials = specials
        offset = 3 if specials else 0
        self.chars = sorted(set(text))
        self.index = {c: i + offset for i, c in enumerate(self.chars)}
        self.pad_id, self.cls_id, self.sep_id = 0, 1, 2
        self.vocab_size = len(self.chars) + offset

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as exc:
            raise ConfigError.single(
                "data.options.tokenizer",
                f"character {exc.args[0]!r} is not in the char tokenizer's vocabulary (built from the training text); "
                f"use tokenizer: byte",
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        off = 3 if self.specials else 0
        return "".join(self.chars[i - off] for i in ids if i >= off)


def load_folder_tokenizer(path: Path, field: str) -> Any:
    """A Hugging Face tokenizer saved in `path`; refusing remote code and any download."""
    require("text", "a tokenizer folder", field)
    from transformers import AutoTokenizer  # the text extra; imported only for a tokenizer folder

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError.single(
            field,
            f"{str(path)!r} is not a tokenizer folder ({str(exc).splitlines()[0]}); "
            f"give a folder written by tokenizer.save_pretrained",
        ) from None


def vocab_size_of(tokenizer: Any) -> int:
    if hasattr(tokenizer, "__len__"):
        return int(len(tokenizer))
    return int(tokenizer.vocab_size)
