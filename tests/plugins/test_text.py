"""Text plugins: text_lm blocks and tokenizers, the gpt model, the hf dataset (local files,
column mapping, a local tokenizer folder, the map cache beside the data) and the hf model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gradloop import load_config, train
from gradloop.build import build_data, build_model
from gradloop.config import validate_config
from gradloop.errors import ConfigError
from gradloop.plugins.models.gpt import GPT, GPTOptions
from tests.support.workload_data import CORPUS, make_texts

pytest.importorskip("transformers")  # the text extra: `make test` installs it, so this never skips there


def test_text_lm_makes_contiguous_shifted_blocks(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("abcdefghij")
    (tmp_path / "corpus" / "b.txt").write_text("klmnopqrst")
    cfg = load_config(
        {
            "model": {"name": "gpt", "options": {"vocab_size": 21, "block_size": 4}},
            "data": {
                "name": "text_lm",
                "root": str(tmp_path),
                "options": {"path": "corpus", "block_size": 4},
                "val_fraction": 0.2,
            },
            "loss": {"name": "cross_entropy"},
            "optimizer": {"name": "sgd"},
        }
    )
    splits = build_data(cfg.data, 0)
    text = "abcdefghij\nklmnopqrst"  # files joined by a newline: 21 characters, 21 distinct
    assert splits.num_outputs == 21 and splits.default_metrics == ("perplexity", "accuracy")
    x, y = splits.train.x, splits.train.y
    assert x.shape == (4, 4) and splits.val.x.shape == (1, 4)  # (21 - 1) // 4 = 5 blocks, the last held out
    chars = sorted(set(text))
    decode = lambda ids: "".join(chars[i] for i in ids)  # noqa: E731
    assert decode(x[0].tolist()) == "abcd" and decode(y[0].tolist()) == "bcde"
    assert decode(x[1].tolist()) == "efgh"
    assert decode(splits.val.x[0].tolist()) == "pqrs" and decode(splits.val.y[0].tolist()) == "qrst"


def test_gpt_ties_weights_and_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTOptions(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()
    assert model.lm_head.weight is model.wte.weight
    idx = torch.randint(0, 13, (2, 8))
    out = model(idx)
    assert out.shape == (2, 8, 13)
    changed = idx.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 13
    # A later token never changes an earlier position's logits.
    torch.testing.assert_close(model(changed)[:, :5], out[:, :5])
    with pytest.raises(ConfigError, match="n_head"):
        validate_config(
            {
                "model": {"name": "gpt", "options": {"vocab_size": 13, "n_embd": 10, "n_head": 3}},
                "data": {"name": "sklearn", "options": {"dataset": "iris"}},
                "loss": {"name": "cross_entropy"},
                "optimizer": {"name": "sgd"},
            }
        )


def test_char_gpt_trains_on_the_shipped_corpus(tmp_path):
    result = train(
        {
            "name": "gpt",
            "device": "cpu",
            "output_dir": str(tmp_path),
            "model": {
                "name": "gpt",
                "options": {"vocab_size": 62, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16},
            },
            "data": {
                "name": "text_lm",
                "root": str(CORPUS.parent),
                "options": {"path": CORPUS.name, "block_size": 16},
                "batch_size": 32,
                "val_fraction": 0.05,
            },
            "loss": {"name": "cross_entropy"},
            "optimizer": {"name": "adamw", "options": {"lr": 3e-3}},
            "trainer": {"epochs": 1, "max_steps": 30, "progress": "none"},
            "tracking": {"enabled": False},
        }
    )
    m = result.metrics
    assert result.status == "FINISHED"
    # val/perplexity is exp(val/loss): both are the mean over the same validation tokens.
    assert m["val/perplexity"] == pytest.approx(torch.tensor(m["val/loss"]).exp().item(), rel=1e-4)
    assert m["val/perplexity"] < 62 / 2  # learnt something over a uniform guess over 62 characters


def _hf_cfg(root: Path, tmp_path: Path, data_options: dict, **model_over) -> dict:
    model_options = {
        "task": "sequence_classification",
        "num_labels": 2,
        "config": {
            "model_type": "bert",
            "vocab_size": 259,
            "hidden_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 64,
        },
        **model_over,
    }
    return {
        "name": "bert",
        "device": "cpu",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": "hf", "options": model_options},
        "data": {"name": "hf", "root": str(root), "options": data_options, "batch_size": 8, "val_fraction": 0.25},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "adamw", "options": {"lr": 1e-3}},
        "trainer": {"epochs": 1, "max_steps": 3, "progress": "none"},
        "metrics": ["accuracy", "f1"],
        "tracking": {"enabled": False},
    }


def test_bert_trains_on_jsonl_and_tokenization_is_cached_beside_the_data(tmp_path):
    root = tmp_path / "data"
    make_texts(root, n=40)
    opts = {"path": "texts.jsonl", "text_column": "text", "label_column": "label", "max_length": 48}
    result = train(_hf_cfg(root, tmp_path, opts))
    assert result.status == "FINISHED" and {"val/accuracy", "val/f1"} <= set(result.metrics)
    cache = root / ".gradloop-cache"
    assert any(cache.rglob("cache-*.arrow"))  # the tokenized table: a second run maps nothing again
    splits = build_data(load_config(_hf_cfg(root, tmp_path, opts)).data, 0)
    assert splits.class_names == ("negative", "positive")
    x, y = splits.train[0]
    assert x["input_ids"].shape == (48,) and x["input_ids"][0].item() == 257  # CLS first
    assert int(x["attention_mask"].sum()) < 48 and y.dtype == torch.int64


def test_hf_batch_read_equals_row_by_row_reads(tmp_path):
    from torch.utils.data import DataLoader

    root = tmp_path / "data"
    make_texts(root, n=40)
    opts = {"path": "texts.jsonl", "text_column": "text", "label_column": "label", "max_length": 32}
    rows = build_data(load_config(_hf_cfg(root, tmp_path, opts)).data, 0).train
    indices = [7, 0, 29, 3, 3, 15]
    batch = rows.__getitems__(indices)
    assert len(batch) == len(indices)
    for i, (x, y) in zip(indices, batch):
        x1, y1 = rows[i]
        assert x.keys() == x1.keys() and y.dtype == y1.dtype and torch.equal(y, y1)
        for key in x1:
            assert x[key].dtype == x1[key].dtype and torch.equal(x[key], x1[key]), key
    # A DataLoader reads through __getitems__ and collates the same batch as row-by-row reads.
    xb, yb = next(iter(DataLoader(rows, batch_sampler=[indices])))
    one_by_one = [rows[i] for i in indices]
    assert torch.equal(yb, torch.stack([y for _, y in one_by_one]))
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(xb[key], torch.stack([x[key] for x, _ in one_by_one])), key


def test_hf_dataset_reads_csv_with_a_local_tokenizer_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path / "data"
    root.mkdir()
    rows = ["sentence,target"] + [f"{'good' if i % 2 else 'bad'} day number {i},{i % 2}" for i in range(20)]
    (root / "rows.csv").write_text("\n".join(rows) + "\n")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "day", "number"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    fast.save_pretrained(root / "tok")
    opts = {
        "path": "rows.csv",
        "text_column": "sentence",
        "label_column": "target",
        "tokenizer_path": "tok",
        "max_length": 8,
    }
    splits = build_data(load_config(_hf_cfg(root, tmp_path, opts)).data, 0)
    x, y = splits.train[0]
    assert x["input_ids"].shape == (8,) and set(x["input_ids"].tolist()) <= set(vocab.values())
    assert splits.num_classes == 2
    with pytest.raises(ConfigError, match="no column 'sentense'"):
        build_data(load_config(_hf_cfg(root, tmp_path, {**opts, "text_column": "sentense"})).data, 0)


def test_hf_model_from_a_saved_folder_and_remote_code_refused(tmp_path):
    cfg = _hf_cfg(tmp_path, tmp_path, {"path": "x.jsonl"})
    model = build_model(load_config(cfg).model)
    model.model.save_pretrained(tmp_path / "bert")
    folder_cfg = _hf_cfg(tmp_path, tmp_path, {"path": "x.jsonl"})
    folder_cfg["model"]["options"] = {"task": "sequence_classification", "num_labels": 2, "path": "bert"}
    loaded = build_model(load_config(folder_cfg).model, str(tmp_path))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for bad in (
        {"trust_remote_code": True},
        {"config": {**cfg["model"]["options"]["config"], "trust_remote_code": True}},
    ):
        refused = json.loads(json.dumps(cfg))
        refused["model"]["options"].update(bad)
        with pytest.raises(ConfigError, match="trust_remote_code is always refused"):
            validate_config(refused)
