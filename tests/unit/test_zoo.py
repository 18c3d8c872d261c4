"""zoo.py's architectures and the torch runtime's sequence buckets (pure parts; the served paths are in
tests/integration/test_real_models.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from surge.server import zoo  # noqa: E402
from surge.server.config import parse_model_config  # noqa: E402
from surge.server.errors import ConfigError  # noqa: E402
from surge.server.runtimes.torch import TorchRuntime, pad_length  # noqa: E402


def test_resnet50_has_torchvisions_parameter_count() -> None:
    model = zoo.resnet_classifier(zoo.RESNET50)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision.models.resnet50()
    classes, scores = model(torch.zeros(1, 3, 64, 64))
    assert classes.dtype == torch.int64 and classes.shape == (1, 5) and scores.shape == (1, 5)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_bert_base_has_bertmodels_parameter_count_without_the_pooler() -> None:
    model = zoo.bert_encoder(zoo.BERT_BASE)
    # transformers' BertModel(BertConfig()) has 109,482,240 parameters, of which the pooler holds 768*768 + 768
    assert sum(p.numel() for p in model.parameters()) == 109_482_240 - 768 * 768 - 768


def test_default_buckets() -> None:
    assert zoo.default_buckets(128) == [16, 32, 64, 128]
    assert zoo.default_buckets(100) == [16, 32, 64, 100]
    assert zoo.default_buckets(8) == [8]


def test_pad_length() -> None:
    a = np.array([[1, 2, 3]], dtype=np.int64)
    assert pad_length(a, 3) is a
    np.testing.assert_array_equal(pad_length(a, 5), [[1, 2, 3, 0, 0]])


@pytest.mark.parametrize(
    ("parameters", "inputs", "message"),
    [
        ({"sequence_buckets": [0, 16]}, [{"name": "ids", "datatype": "INT64", "dims": [-1]}], r"sequence_buckets: expected a list of integers >= 1"),
        ({"sequence_buckets": [16]}, [{"name": "ids", "datatype": "INT64", "dims": [4]}], r"needs inputs whose last dimension, and only that one, is variable"),
        ({"sequence_buckets": [16]}, [{"name": "ids", "datatype": "INT64", "dims": [-1, -1]}], r"needs inputs whose last dimension, and only that one"),
    ],
)
def test_sequence_bucket_errors(tmp_path, parameters, inputs, message) -> None:
    config = parse_model_config("m", {"backend": "torch", "max_batch_size": 4, "parameters": parameters, "input": inputs,
                                      "output": [{"name": "y", "datatype": "FP32", "dims": [2]}]})
    folder = zoo.write_bert_entry(tmp_path, "b", spec=zoo.BERT_TINY, max_length=16, max_batch_size=4)
    with pytest.raises(ConfigError, match=message):
        TorchRuntime().load(folder / "1" / "model.pt2", config, 0)


def test_exported_programs_carry_no_dtype_or_device_checks_and_run_in_fp16(tmp_path) -> None:
    """torch.export turns dtype and device conversions into checks (fp32, CPU) that would fail on a GPU in fp16:
    the programs must have none, and run once the module is cast to half precision (as precision = "fp16" does)."""
    resnet = zoo.write_resnet_entry(tmp_path, "r", spec=zoo.RESNET_SMALL, max_batch_size=4)
    bert = zoo.write_bert_entry(tmp_path, "b", spec=zoo.BERT_TINY, max_length=32, max_batch_size=4)
    programs = {name: torch.export.load(str(folder / "1" / "model.pt2")).module() for name, folder in (("r", resnet), ("b", bert))}
    for module in programs.values():
        assert "_assert_tensor_metadata" not in module.code and "device(type='cpu')" not in module.code
    images = torch.rand(2, 3, zoo.RESNET_SMALL.crop, zoo.RESNET_SMALL.crop)
    with torch.inference_mode():
        classes, scores = programs["r"].to(torch.float16)(images.half())
        ref_classes, ref_scores = zoo.resnet_classifier(zoo.RESNET_SMALL)(images)
        assert scores.dtype == torch.float16 and torch.allclose(scores.float(), ref_scores, atol=2e-2)
        ids = torch.randint(1, zoo.BERT_TINY.vocab_size, (2, 20))
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        embedding = programs["b"].to(torch.float16)(ids, mask)
        assert torch.allclose(embedding.float(), zoo.bert_encoder(zoo.BERT_TINY)(ids, mask), atol=1e-2)
