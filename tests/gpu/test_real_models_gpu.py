"""The two real serving paths on a GPU (fp16, CUDA graphs): JPEG bytes -> top-5 with decode_jpeg on the device
(nvJPEG where torchvision is importable) and the Numba CUDA kernels, and the BERT encoder with a CUDA graph per
(batch, length) bucket. Served results are compared with fp32 references computed in process on the CPU.
Marked ``gpu``; run by bench/gpu/run.sh."""

from __future__ import annotations

import io

import numpy as np
import pytest

from surge.clients import InferenceClient
from surge.server.app import ServerConfig
from tests.conftest import ServerThread

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::numba.core.errors.NumbaPerformanceWarning")]


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory):
    pytest.importorskip("PIL")
    from surge.kernels import cuda as kc
    from surge.server import zoo

    reason = kc.why_unavailable()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("real_gpu")
    zoo.write_resnet_entry(root, "resnet", spec=zoo.RESNET_SMALL, max_batch_size=16, precision="fp16", kind="gpu")
    zoo.write_bert_entry(root, "bert", spec=zoo.BERT_TINY, max_length=64, max_batch_size=16, precision="fp16", kind="gpu", sequence_buckets=[16, 32, 64])
    thread = ServerThread(ServerConfig(model_repository=root, grpc_port=0, metrics_port=0, http_port=0)).start()
    yield thread
    thread.stop()


def test_jpegs_decode_and_preprocess_on_the_device_and_top5_matches(gpu_server) -> None:
    import torch
    from PIL import Image

    from surge.kernels.image import resize_crop_normalize_ref
    from surge.server import zoo
    from surge.server.execution.decode import encode_jpeg

    version = gpu_server.server.repository.get("resnet")
    assert all(inst.pipeline.on_device for inst in version._instances), "preprocessing did not run on the GPU"
    rng = np.random.default_rng(0)
    sizes = [(96, 128), (96, 128), (120, 90), (300, 200)]
    jpegs = [encode_jpeg(np.kron(rng.integers(0, 256, (h // 8, w // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8), quality=95) for h, w in sizes]
    rows = np.empty((len(jpegs), 1), dtype=np.object_)
    rows[:, 0] = jpegs
    with InferenceClient(gpu_server.address, timeout_s=120, retries=0) as client:
        result = client.infer("resnet", {"jpeg": rows})
    spec = zoo.RESNET_SMALL
    x = np.stack([resize_crop_normalize_ref(np.asarray(Image.open(io.BytesIO(j)).convert("RGB")), (spec.resize,) * 2, (spec.crop,) * 2,
                                            zoo.IMAGENET_MEAN, zoo.IMAGENET_STD) for j in jpegs])  # fmt: skip
    with torch.inference_mode():
        classes, scores = zoo.resnet_classifier(spec)(torch.from_numpy(x))
    # fp16 and a different JPEG decoder (nvJPEG vs libjpeg): the top class where it is clear, scores to fp16's precision
    clear = (scores[:, 0] - scores[:, 1]).numpy() > 0.05
    np.testing.assert_array_equal(result["classes"][clear, 0], classes.numpy()[clear, 0])
    np.testing.assert_allclose(result["scores"][:, 0], scores.numpy()[:, 0], atol=0.05)


@pytest.mark.parametrize("length", [5, 16, 40])
def test_bert_buckets_replay_graphs_and_match_fp32(gpu_server, length: int) -> None:
    import torch

    from surge.server import zoo

    version = gpu_server.server.repository.get("bert")
    runtime = version._instances[0].runtime
    assert {key[1] for key in runtime._graphs} == {16, 32, 64}, "no graph per length bucket"
    rng = np.random.default_rng(length)
    ids = rng.integers(1, zoo.BERT_TINY.vocab_size, (3, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, length // 2 :] = 0
    with InferenceClient(gpu_server.address, timeout_s=120, retries=0) as client:
        got = client.infer("bert", {"input_ids": ids, "attention_mask": mask})["embedding"]
    with torch.inference_mode():
        expected = zoo.bert_encoder(zoo.BERT_TINY)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2)
