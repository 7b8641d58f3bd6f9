"""The `hf` dataset: local files (csv, json/jsonl, parquet, text) or a `save_to_disk` folder
read with Hugging Face `datasets`, memory-mapped Arrow (a dataset bigger than RAM works), with
the text column tokenized once and cached beside the data (the `datasets` map cache).

The config names the text column (and optionally a second one for pairs), the label column and
the split. Labels that are strings become class indices in sorted order; integers are kept.
Validation is `val_split` when given, else a seeded `data.val_fraction` of the rows.
Tokenizer: `byte` or `char` (built in, with PAD/CLS/SEP) or `tokenizer_path`, a folder saved
with `save_pretrained` (local_files_only: nothing is fetched). Samples are padded to max_length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.utils.data import Dataset

from gradloop.data import DataContext, DataSplits, resolve_data_path, split_indices
from gradloop.errors import ConfigError
from gradloop.plugins.datasets._tokenizers import ByteTokenizer, CharTokenizer, load_folder_tokenizer, vocab_size_of
from gradloop.registry import datasets

_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


class HFDataOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(
        min_length=1, description="a csv/json/jsonl/parquet/txt file or a save_to_disk folder, under the data root"
    )
    split: str = Field("train", min_length=1, description="the split to train on")
    val_split: str | None = Field(
        None, min_length=1, description="a split to validate on (default: data.val_fraction of the rows)"
    )
    text_column: str = Field("text", min_length=1)
    text_pair_column: str | None = Field(None, min_length=1, description="a second text column, for sentence pairs")
    label_column: str = Field("label", min_length=1)
    tokenizer: Literal["byte", "char"] | None = Field(None, description="built-in tokenizer (default: byte)")
    tokenizer_path: str | None = Field(None, min_length=1, description="a saved Hugging Face tokenizer folder instead")
    max_length: int = Field(128, ge=2, le=100_000, description="tokens per sample, after truncation and padding")

    @model_validator(mode="after")
    def _one_tokenizer(self) -> HFDataOptions:
        if self.tokenizer_path is not None and self.tokenizer is not None:
            raise ValueError("give tokenizer or tokenizer_path, not both")
        return self


def hf_files(options: dict, root: Path) -> list[Path]:
    path = root / str(options.get("path", ""))
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


class BuiltinEncoder:
    """Batched tokenization with a built-in tokenizer, in the shape Hugging Face tokenizers give
    (input_ids, attention_mask), so that `datasets` can fingerprint it and cache the result."""

    def __init__(self, tokenizer: ByteTokenizer | CharTokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, list[list[int]]]:
        tok, n = self.tokenizer, self.max_length
        ids_out, mask_out = [], []
        for i, text in enumerate(texts):
            ids = [tok.cls_id, *tok.encode(text), tok.sep_id]
            if pairs is not None:
                ids += [*tok.encode(pairs[i]), tok.sep_id]
            ids = ids[:n]
            mask = [1] * len(ids) + [0] * (n - len(ids))
            ids_out.append(ids + [tok.pad_id] * (n - len(ids)))
            mask_out.append(mask)
        return {"input_ids": ids_out, "attention_mask": mask_out}


class Tokenize:
    """The map function: text column(s) -> input_ids, attention_mask (fixed length)."""

    def __init__(self, encoder: Any, text: str, pair: str | None, max_length: int, builtin: bool) -> None:
        self.encoder, self.text, self.pair, self.max_length, self.builtin = encoder, text, pair, max_length, builtin

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = [str(t) for t in batch[self.text]]
        pairs = [str(t) for t in batch[self.pair]] if self.pair else None
        if self.builtin:
            return self.encoder(texts, pairs)
        enc = self.encoder(texts, pairs, truncation=True, padding="max_length", max_length=self.max_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}


class TokenizedRows(Dataset):
    """Rows of a tokenized Arrow table as ({input_ids, attention_mask}, label) tensors."""

    def __init__(self, table: Any) -> None:
        self.table = table.with_format("torch", columns=["input_ids", "attention_mask", "label"])

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        row = self.table[int(i)]
        return {"input_ids": row["input_ids"], "attention_mask": row["attention_mask"]}, row["label"]

    def __getitems__(self, indices: list[int]) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """A DataLoader batch's rows in one Arrow read (instead of one read and format per row);
        the DataLoader's collate then stacks them as it stacks single rows."""
        rows = self.table[[int(i) for i in indices]]
        ids, mask, labels = rows["input_ids"], rows["attention_mask"], rows["label"]
        return [({"input_ids": ids[k], "attention_mask": mask[k]}, labels[k]) for k in range(len(indices))]


def _load(path: Path, cache: Path) -> Any:
    import datasets as hfd  # the text extra, checked by config validation

    if path.is_dir():
        try:
            return hfd.load_from_disk(str(path))
        except FileNotFoundError as exc:
            raise ConfigError.single("data.options.path", f"folder is not a save_to_disk dataset ({exc})") from None
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConfigError.single(
            "data.options.path", f"{path.name!r}: use a {', '.join(sorted(_FORMATS))} file or a save_to_disk folder"
        )
    return hfd.load_dataset(fmt, data_files={"train": str(path)}, cache_dir=str(cache))


@datasets.register(
    "hf",
    options=HFDataOptions,
    description="Text classification from local files or a save_to_disk folder (Hugging Face datasets, memory-mapped).",
    path_options=("path", "tokenizer_path"),
    files=hf_files,
    extra="text",
)
def hf_dataset(*, options: HFDataOptions, ctx: DataContext) -> DataSplits:
    import datasets as hfd  # the text extra, checked by config validation

    path = resolve_data_path(ctx, options.path, "data.options.path")
    # Tokenized tables and the Arrow copies of csv/json files go beside the data.
    cache = path.parent / ".gradloop-cache"
    loaded = _load(path, cache)
    splits = loaded if isinstance(loaded, hfd.DatasetDict) else hfd.DatasetDict({"train": loaded})
    for key, name in (("split", options.split), ("val_split", options.val_split)):
        if name is not None and name not in splits:
            raise ConfigError.single(f"data.options.{key}", f"no split {name!r}; the data has: {', '.join(splits)}")
    table = splits[options.split]
    for key in ("text_column", "text_pair_column", "label_column"):
        col = getattr(options, key)
        if col is not None and col not in table.column_names:
            raise ConfigError.single(
                f"data.options.{key}", f"no column {col!r}; the data has: {', '.join(table.column_names)}"
            )

    labels = table.unique(options.label_column)
    if options.val_split is not None:
        labels = sorted(set(labels) | set(splits[options.val_split].unique(options.label_column)), key=str)
    names, to_index = _label_index(labels)

    if options.tokenizer_path is not None:
        folder = resolve_data_path(ctx, options.tokenizer_path, "data.options.tokenizer_path")
        encoder, builtin = load_folder_tokenizer(folder, "data.options.tokenizer_path"), False
        vocab = vocab_size_of(encoder)
    else:
        tok: ByteTokenizer | CharTokenizer
        if options.tokenizer == "char":
            tok = CharTokenizer("".join(str(t) for t in table[options.text_column]), specials=True)
        else:
            tok = ByteTokenizer(specials=True)
        encoder, builtin, vocab = BuiltinEncoder(tok, options.max_length), True, tok.vocab_size

    def encode(part: Any) -> Any:
        part = part.map(
            Tokenize(encoder, options.text_column, options.text_pair_column, options.max_length, builtin),
            batched=True,
            desc="tokenizing",
        )
        return (
            part.map(lambda b: {"label": [to_index[v] for v in b[options.label_column]]}, batched=True)
            if to_index
            else (part if options.label_column == "label" else part.rename_column(options.label_column, "label"))
        )

    if options.val_split is not None:
        train, val = encode(table), encode(splits[options.val_split])
    else:
        train_idx, val_idx = split_indices(len(table), ctx.val_fraction, ctx.split_seed)
        full = encode(table)
        train = full.select(train_idx.tolist())
        val = full.select(val_idx.tolist()) if len(val_idx) else None
    n = len(names)
    return DataSplits(
        train=TokenizedRows(train),
        val=TokenizedRows(val) if val is not None else None,
        task="classification",
        num_features=options.max_length,
        num_outputs=n,
        num_classes=n,
        description=f"hf {options.path}: {len(table)} rows, {n} classes, vocabulary {vocab}",
        class_names=tuple(names),
    )


def _label_index(labels: list[Any]) -> tuple[list[str], dict[Any, int] | None]:
    """Class names, and the mapping to indices (None when the labels already are 0..K-1)."""
    if all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        ordered = sorted(labels)
        if ordered == list(range(len(ordered))):
            return [str(v) for v in ordered], None
        return [str(v) for v in ordered], {v: i for i, v in enumerate(ordered)}
    ordered = sorted(labels, key=str)
    return [str(v) for v in ordered], {v: i for i, v in enumerate(ordered)}
