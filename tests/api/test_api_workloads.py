"""The vision and text plugins over HTTP, against a real `gradloop serve` (no workers): paths
stay under --data-root (a weights, tokenizer or data path outside it is a 422),
--max-dataset-bytes counts the files a dataset reads, and --max-model-params counts the model
built on the meta device, for the timm, hf and gpt models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.api_service import Service, problem
from tests.support.workload_data import make_images, make_texts

pytestmark = [pytest.mark.server, pytest.mark.timeout(240)]
pytest.importorskip("timm")
pytest.importorskip("transformers")

MAX_PARAMS = 200_000
MAX_BYTES = 50_000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(
        tmp_path_factory.mktemp("svc-workloads"),
        extra_args=[
            "--max-concurrent",
            "0",
            "--max-model-params",
            str(MAX_PARAMS),
            "--max-dataset-bytes",
            str(MAX_BYTES),
        ],
    )
    make_images(svc.data_root, per_class=6, size=16)  # 24 PNGs: well under MAX_BYTES
    make_images(svc.data_root / "big", per_class=60, size=32)  # 240 PNGs: over it
    make_texts(svc.data_root, n=40)
    try:
        yield svc.wait_ready()
    finally:
        svc.stop()


def _config(model: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "w",
        "model": model,
        "data": data or {"name": "image_folder", "options": {"path": "images"}, "batch_size": 8},
        "loss": {"name": "cross_entropy"},
        "optimizer": {"name": "sgd", "options": {"lr": 0.01}},
        "trainer": {"epochs": 1},
    }


TIMM_SMALL = {
    "name": "timm",
    "options": {
        "name": "vit_tiny_patch16_224",
        "num_classes": 4,
        "kwargs": {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2},
    },
}
BERT = {
    "model_type": "bert",
    "vocab_size": 259,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}
TEXTS = {"name": "hf", "options": {"path": "texts.jsonl", "max_length": 32}, "batch_size": 8}


def _fields(response) -> dict[str, str]:
    return {e["path"]: e["message"] for e in problem(response, 422)["errors"]}


def test_small_vision_and_text_jobs_are_accepted(service: Service) -> None:
    assert service.submit(_config(TIMM_SMALL)).status_code == 202
    hf = {"name": "hf", "options": {"task": "sequence_classification", "num_labels": 2, "config": BERT}}
    assert service.submit(_config(hf, TEXTS)).status_code == 202


@pytest.mark.parametrize(
    "model, data, field",
    [
        (
            {**TIMM_SMALL, "options": {**TIMM_SMALL["options"], "weights_path": "../outside.pt"}},
            None,
            "model.options.weights_path",
        ),
        (
            {"name": "torchvision", "options": {"name": "resnet18", "num_classes": 4, "weights_path": "/etc/passwd"}},
            None,
            "model.options.weights_path",
        ),
        ({"name": "hf", "options": {"num_labels": 2, "path": "/tmp"}}, TEXTS, "model.options.path"),
        (
            TIMM_SMALL,
            {"name": "hf", "options": {"path": "texts.jsonl", "tokenizer_path": "../../tok"}},
            "data.options.tokenizer_path",
        ),
        (
            TIMM_SMALL,
            {"name": "image_folder", "options": {"path": "images", "val_path": "/var"}},
            "data.options.val_path",
        ),
        (TIMM_SMALL, {"name": "text_lm", "options": {"path": "/usr/share"}}, "data.options.path"),
    ],
)
def test_paths_outside_the_data_root_are_422(service: Service, model, data, field) -> None:
    fields = _fields(service.submit(_config(model, data)))
    assert field in fields and "outside the service's data root" in fields[field]


def test_max_dataset_bytes_counts_every_image_the_folder_holds(service: Service) -> None:
    fields = _fields(service.submit(_config(TIMM_SMALL, {"name": "image_folder", "options": {"path": "big/images"}})))
    assert "data.options.path" in fields and f"limit of {MAX_BYTES}" in fields["data.options.path"]


@pytest.mark.parametrize(
    "model, data",
    [
        ({"name": "timm", "options": {"name": "resnet18", "num_classes": 4}}, None),  # ~11M parameters
        (
            {
                "name": "hf",
                "options": {"num_labels": 2, "config": {**BERT, "hidden_size": 256, "intermediate_size": 1024}},
            },
            TEXTS,
        ),
        (
            {"name": "gpt", "options": {"vocab_size": 259, "n_layer": 4, "n_embd": 128}},
            {"name": "text_lm", "options": {"path": "texts.jsonl", "tokenizer": "byte"}},
        ),
    ],
    ids=["timm", "hf", "gpt"],
)
def test_max_model_params_counts_the_model_on_the_meta_device(service: Service, model, data) -> None:
    fields = _fields(service.submit(_config(model, data)))
    assert "model.options" in fields and f"limit of {MAX_PARAMS}" in fields["model.options"], fields
