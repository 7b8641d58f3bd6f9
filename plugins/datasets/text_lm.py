"""The `text_lm` dataset: a plain-text corpus as contiguous blocks of tokens for causal language modelling.

The corpus (one file, or every `*.txt` file of a folder in name order, joined by newlines) is
tokenized once and cut into non-overlapping blocks of `block_size` tokens: input tokens
[i*T, (i+1)*T) and targets one token further on. Validation is the corpus's last
`val_fraction` of blocks (held out by position, as nanoGPT does, so no validation text appears
in training). The blocks are int64 tensors in memory, batched by slicing on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gradloop.data import DataContext, DataSplits, TensorData, resolve_data_path
from gradloop.errors import ConfigError
from gradloop.plugins.datasets._tokenizers import ByteTokenizer, CharTokenizer, load_folder_tokenizer, vocab_size_of
from gradloop.registry import datasets


class TextLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="a text file, or a folder of *.txt files, under the data root")
    block_size: int = Field(128, ge=1, le=1_000_000, description="tokens per sample")
    tokenizer: Literal["byte", "char"] | None = Field(None, description="built-in tokenizer (default: char)")
    tokenizer_path: str | None = Field(None, min_length=1, description="a saved Hugging Face tokenizer folder instead")
    max_chars: int | None = Field(None, ge=1, description="read at most this many characters of the corpus")

    @model_validator(mode="after")
    def _one_tokenizer(self) -> TextLMOptions:
        if self.tokenizer_path is not None and self.tokenizer is not None:
            raise ValueError("give tokenizer or tokenizer_path, not both")
        return self


def corpus_files(root: Path) -> list[Path]:
    """The files a corpus path reads: the file itself, or a folder's *.txt files in name order."""
    return sorted(p for p in root.rglob("*.txt") if p.is_file()) if root.is_dir() else [root]


def text_lm_files(options: dict, root: Path) -> list[Path]:
    return corpus_files(root / str(options.get("path", "")))


@datasets.register(
    "text_lm",
    options=TextLMOptions,
    description="A text corpus (file or folder) as contiguous blocks of block_size tokens for a causal language model.",
    path_options=("path", "tokenizer_path"),
    files=text_lm_files,
)
def text_lm(*, options: TextLMOptions, ctx: DataContext) -> DataSplits:
    root = resolve_data_path(ctx, options.path, "data.options.path")
    files = corpus_files(root)
    if not files:
        raise ConfigError.single(
            "data.options.path", f"folder {options.path!r} has no *.txt file; put the corpus there"
        )
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    if options.max_chars is not None:
        text = text[: options.max_chars]
    if options.tokenizer_path is not None:
        tok = load_folder_tokenizer(
            resolve_data_path(ctx, options.tokenizer_path, "data.options.tokenizer_path"), "data.options.tokenizer_path"
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        vocab = vocab_size_of(tok)
    else:
        tok = ByteTokenizer() if options.tokenizer == "byte" else CharTokenizer(text)
        ids, vocab = tok.encode(text), tok.vocab_size
    t = options.block_size
    blocks = (len(ids) - 1) // t
    if blocks < 2:
        raise ConfigError.single(
            "data.options.block_size",
            f"the corpus has {len(ids)} tokens, fewer than two blocks of block_size {t}; lower block_size or add text",
        )
    tokens = torch.tensor(ids[: blocks * t + 1], dtype=torch.int64)
    x = tokens[:-1].view(blocks, t)
    y = tokens[1:].view(blocks, t)
    n_val = int(round(blocks * ctx.val_fraction)) if ctx.val_fraction > 0 else 0
    if n_val >= blocks:
        raise ConfigError.single(
            "data.val_fraction", f"val_fraction {ctx.val_fraction} leaves no training block of {blocks}"
        )
    train = TensorData(x[: blocks - n_val], y[: blocks - n_val])
    val = TensorData(x[blocks - n_val :], y[blocks - n_val :]) if n_val else None
    return DataSplits(
        train=train,
        val=val,
        task="classification",
        num_features=t,
        num_outputs=vocab,
        num_classes=vocab,
        description=f"text_lm {options.path}: {len(ids)} tokens, {blocks} blocks of {t}, vocabulary {vocab}",
        default_metrics=("perplexity", "accuracy"),
    )
