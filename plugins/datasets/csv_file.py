"""The `csv` dataset: a CSV file with a header; feature and target columns picked by name."""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from gradloop.data import DataContext, DataSplits, TensorData, make_splits, resolve_data_path
from gradloop.errors import ConfigError
from gradloop.plugins.datasets._targets import FileTask, binary_from_labels, encode_labels
from gradloop.registry import datasets


class CSVOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, description="CSV file, relative to the data root")
    target: str = Field(min_length=1, description="name of the target column")
    features: list[str] | None = Field(
        None, min_length=1, description="feature columns (default: every column but the target)"
    )
    task: FileTask = Field(
        "classification", description="classification (labels -> class indices), binary or regression"
    )
    standardize: bool = Field(True, description="scale features with the training split's mean and std")
    delimiter: str = Field(",", min_length=1, max_length=1)


@datasets.register(
    "csv",
    options=CSVOptions,
    description="A CSV file with a header row; numeric features, target column by name.",
    path_options=("path",),
)
def csv_dataset(*, options: CSVOptions, ctx: DataContext) -> DataSplits:
    path = resolve_data_path(ctx, options.path, "data.options.path")
    header, rows = _read(path, options)
    target_col = _column(header, options.target, "data.options.target")
    names = options.features if options.features is not None else [h for h in header if h != options.target]
    if not names:
        raise ConfigError.single(
            "data.options.features",
            f"{options.path!r} has no column besides the target {options.target!r}; add feature columns",
        )
    if options.target in names:
        raise ConfigError.single(
            "data.options.features",
            f"the target column {options.target!r} is also listed as a feature; remove it from features",
        )
    cols = [_column(header, n, "data.options.features") for n in names]
    x = torch.tensor(
        [[_number(r[c], header[c], i, "data.options.features") for c in cols] for i, r in rows], dtype=torch.float32
    )
    raw_y = [r[target_col].strip() for _, r in rows]
    desc = f"csv {options.path}: {len(rows)} rows, {len(names)} features"
    if options.task == "regression":
        y = torch.tensor(
            [[_number(v, options.target, i, "data.options.target")] for (i, _), v in zip(rows, raw_y)],
            dtype=torch.float32,
        )
        return make_splits(TensorData(x, y), ctx, "regression", standardize_x=options.standardize, description=desc)
    if options.task == "binary":
        y = binary_from_labels(raw_y, "data.options.target")
        return make_splits(TensorData(x, y), ctx, "binary", standardize_x=options.standardize, description=desc)
    y, labels = encode_labels(raw_y)
    return make_splits(
        TensorData(x, y),
        ctx,
        "classification",
        num_classes=len(labels),
        standardize_x=options.standardize,
        description=f"{desc}, classes {labels[:10]}",
    )


def _read(path: Path, options: CSVOptions) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) of every non-blank row."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=options.delimiter)
        header = next(reader, None)
        if not header:
            raise ConfigError.single(
                "data.options.path", f"{options.path!r} is empty; it needs a header row naming the columns"
            )
        header = [h.strip() for h in header]
        rows = []
        for fields in reader:
            if not any(v.strip() for v in fields):
                continue
            if len(fields) != len(header):
                raise ConfigError.single(
                    "data.options.path",
                    f"line {reader.line_num} of {options.path!r} has {len(fields)} fields "
                    f"but the header has {len(header)}",
                )
            rows.append((reader.line_num, fields))
    if not rows:
        raise ConfigError.single("data.options.path", f"{options.path!r} has a header but no data rows")
    return header, rows


def _column(header: list[str], name: str, field: str) -> int:
    if name not in header:
        close = difflib.get_close_matches(name, header, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError.single(field, f"column {name!r} is not in the file{hint}; columns: {', '.join(header)}")
    return header.index(name)


def _number(text: str, column: str, line: int, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError.single(
            field,
            f"column {column!r} holds {text!r} on line {line}, not a number; fix the file or leave the column out",
        ) from None
