"""The two real serving paths on the CPU, over the wire: JPEG bytes -> top-5 classes (ResNet layout, a reduced width)
and token ids -> a mean-pooled BERT embedding (a tiny config), each against a reference computed in process;
undecodable images fail only the requests that sent them; ``surge batch`` over a folder and a Parquet file of JPEGs."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
pytest.importorskip("numba")

from surge.clients import AsyncInferenceClient, InferenceClient  # noqa: E402
from surge.clients.errors import InvalidArgumentError  # noqa: E402
from surge.kernels.image import resize_crop_normalize_ref  # noqa: E402
from surge.server import zoo  # noqa: E402
from surge.server.cli import main  # noqa: E402
from surge.server.execution.decode import encode_jpeg  # noqa: E402

RESNET = zoo.RESNET_SMALL
BERT = zoo.BERT_TINY
SIZES = [(96, 128), (96, 128), (80, 80), (120, 90), (64, 100), (200, 150)]  # two share a size: one kernel group


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random RGB image (coarse noise, upsampled), so that JPEG keeps it close."""
    coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    return np.clip(np.kron(coarse, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    rng = np.random.default_rng(7)
    return [encode_jpeg(_photo(rng, h, w)) for h, w in SIZES]


def _reference_top5(jpegs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Decode, preprocess (the kernels' NumPy reference) and classify in process, one image at a time."""
    images = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs]
    batch = np.stack([
        resize_crop_normalize_ref(im, (RESNET.resize, RESNET.resize), (RESNET.crop, RESNET.crop), zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)
        for im in images
    ])
    with torch.inference_mode():
        classes, scores = zoo.resnet_classifier(RESNET)(torch.from_numpy(batch))
    return classes.numpy(), scores.numpy()


def _check_top5(classes: np.ndarray, scores: np.ndarray, expected: tuple[np.ndarray, np.ndarray]) -> None:
    assert classes.dtype == np.int64 and classes.shape == expected[0].shape and scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(classes, expected[0])


def _rows(payloads: list[bytes]) -> np.ndarray:
    rows = np.empty((len(payloads), 1), dtype=np.object_)
    rows[:, 0] = payloads
    return rows


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real-models")
    zoo.write_resnet_entry(root, "resnet", spec=RESNET, max_batch_size=8, max_queue_delay_s=0.05)
    zoo.write_bert_entry(root, "bert", spec=BERT, max_length=64, max_batch_size=8, sequence_buckets=[16, 32, 64])
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    from surge.server.app import ServerConfig
    from tests.conftest import ServerThread

    thread = ServerThread(ServerConfig(model_repository=repo, grpc_port=0, metrics_port=0, http_port=0)).start()
    yield thread
    thread.stop()


def test_jpeg_bytes_in_top5_out_matches_in_process(server, jpegs) -> None:
    with InferenceClient(server.address, timeout_s=60) as client:
        metadata = client.model_metadata("resnet")
        result = client.infer("resnet", {"jpeg": _rows(jpegs)})
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("jpeg", "BYTES", [-1, 1])]
    assert sorted(result.outputs) == ["classes", "scores"]  # only the top 5 comes back
    _check_top5(result["classes"], result["scores"], _reference_top5(jpegs))


def test_tritonclient_gets_the_same_top5(server, jpegs, tmp_path: Path) -> None:
    """tritonclient.grpc in a child process (its generated protobuf code cannot share a process with surge.protos)."""
    np.save(tmp_path / "jpegs.npy", _rows(jpegs[2:5]), allow_pickle=True)
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        try:
            import tritonclient.grpc as grpcclient
        except ImportError:
            sys.exit(3)
        client = grpcclient.InferenceServerClient({server.address!r})
        data = grpcclient.InferInput("jpeg", [3, 1], "BYTES")
        data.set_data_from_numpy(np.load("jpegs.npy", allow_pickle=True))
        outputs = [grpcclient.InferRequestedOutput("classes"), grpcclient.InferRequestedOutput("scores")]
        result = client.infer("resnet", [data], outputs=outputs)
        np.savez("out.npz", classes=result.as_numpy("classes"), scores=result.as_numpy("scores"))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    if done.returncode == 3:
        pytest.skip("tritonclient[grpc] is not installed")
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as out:
        _check_top5(out["classes"], out["scores"], _reference_top5(jpegs[2:5]))


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


BAD = {
    "garbage": (b"\x00not an image at all", r"not a JPEG image"),
    "png": (None, r"a PNG image; only JPEG is accepted"),
    "truncated": ("truncated", r"a corrupt JPEG image"),
    "empty": (b"", r"empty; expected the bytes of one JPEG image"),
}


def _bad_payload(kind: str, jpegs: list[bytes]) -> bytes:
    payload = BAD[kind][0]
    if payload is None:
        return _png(np.zeros((20, 20, 3), dtype=np.uint8))
    if payload == "truncated":
        return jpegs[5][: len(jpegs[5]) // 3]
    return payload


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_row_is_invalid_argument_naming_the_row(server, jpegs, kind) -> None:
    payloads = [jpegs[0], jpegs[1], _bad_payload(kind, jpegs)]
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        with pytest.raises(InvalidArgumentError) as info:
            client.infer("resnet", {"jpeg": _rows(payloads)})
        message = str(info.value)
        assert re.search(rf"decode_jpeg\) on input 'jpeg': row 2: {BAD[kind][1]}", message), message
        assert "/" not in message.split("row 2")[1]  # no server paths
        result = client.infer("resnet", {"jpeg": _rows(jpegs[:2])})  # still serving
    _check_top5(result["classes"], result["scores"], _reference_top5(jpegs[:2]))


async def test_bad_rows_fail_only_their_requests_in_a_shared_batch(server, jpegs) -> None:
    """Requests batched together with a bad one still get their answers; only the senders of bad rows fail."""
    expected = _reference_top5(jpegs)
    bad = {1: _bad_payload("garbage", jpegs), 4: _bad_payload("truncated", jpegs)}
    async with AsyncInferenceClient(server.address, timeout_s=60, retries=0) as client:
        before = (await client.model_statistics("resnet")).model_stats[0]
        outcomes = await asyncio.gather(
            *(client.infer("resnet", {"jpeg": _rows([bad.get(i, jpegs[i])])}) for i in range(len(jpegs))), return_exceptions=True
        )
        after = (await client.model_statistics("resnet")).model_stats[0]
    for i, outcome in enumerate(outcomes):
        if i in bad:
            assert isinstance(outcome, InvalidArgumentError) and "row 0:" in str(outcome), outcome
        else:
            assert not isinstance(outcome, BaseException), outcome
            _check_top5(outcome["classes"], outcome["scores"], (expected[0][i : i + 1], expected[1][i : i + 1]))
    # the six requests arrive within the 50 ms queue delay and are batched (fewer executions than requests); only
    # the good ones count as inferences
    assert after.execution_count - before.execution_count < len(jpegs) - len(bad)
    assert after.inference_count - before.inference_count == len(jpegs) - len(bad)


def _token_rows(rng: np.random.Generator, rows: int, length: int, real: list[int]) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(1, BERT.vocab_size, (rows, length)).astype(np.int64)
    mask = (np.arange(length)[None, :] < np.asarray(real)[:, None]).astype(np.int64)
    return ids * mask, mask


def test_bert_embedding_matches_in_process(server) -> None:
    rng = np.random.default_rng(3)
    encoder = zoo.bert_encoder(BERT)
    with InferenceClient(server.address, timeout_s=60) as client:
        for length, real in ((10, [10, 7, 3]), (23, [23, 1])):
            ids, mask = _token_rows(rng, len(real), length, real)
            embedding = client.infer("bert", {"input_ids": ids, "attention_mask": mask})["embedding"]
            with torch.inference_mode():
                expected = encoder(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
            assert embedding.shape == (len(real), BERT.hidden) and embedding.dtype == np.float32
            np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-5)
        # padding to a bucket length changes nothing: the mask keeps it out of attention and the mean
        ids, mask = _token_rows(rng, 2, 9, [9, 5])
        short = client.infer("bert", {"input_ids": ids, "attention_mask": mask})["embedding"]
        padded = client.infer("bert", {"input_ids": np.pad(ids, ((0, 0), (0, 7))), "attention_mask": np.pad(mask, ((0, 0), (0, 7)))})["embedding"]
    np.testing.assert_allclose(padded, short, rtol=1e-4, atol=1e-5)


def test_bert_rejects_sequences_longer_than_the_largest_bucket(server) -> None:
    ids = np.ones((1, 65), dtype=np.int64)
    with InferenceClient(server.address, timeout_s=60, retries=0) as client:
        with pytest.raises(InvalidArgumentError, match=r"'attention_mask', 'input_ids'.*length 65 exceeds the longest accepted, 64"):
            client.infer("bert", {"input_ids": ids, "attention_mask": ids})


def test_bert_layout_is_transformers_bert(tmp_path: Path) -> None:
    """zoo's encoder with BertModel's weights gives BertModel's last hidden state, mean-pooled (transformers in a
    child process started outside the checkout, whose kernels/ folder would shadow transformers' ``kernels``)."""
    code = textwrap.dedent("""
        import importlib.util, sys
        if importlib.util.find_spec("transformers") is None:
            sys.exit(3)
        import torch
        from transformers import BertConfig, BertModel
        from surge.server import zoo
        spec = zoo.BERT_TINY
        config = BertConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                            num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                            max_position_embeddings=spec.max_length, hidden_act="gelu")
        torch.manual_seed(1)
        bert = BertModel(config, add_pooling_layer=False).eval()
        ours = zoo.bert_encoder(spec)
        missing, unexpected = ours.load_state_dict(bert.state_dict(), strict=False)
        assert not missing and set(unexpected) <= {"embeddings.position_ids", "embeddings.token_type_ids"}, (missing, unexpected)
        ids = torch.randint(1, spec.vocab_size, (3, 12))
        mask = torch.ones(3, 12, dtype=torch.int64)
        mask[1, 8:] = 0
        mask[2, 2:] = 0
        with torch.inference_mode():
            hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
            expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            got = ours(ids, mask)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        print("same")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if done.returncode == 3:
        pytest.skip("transformers is not installed")
    assert done.returncode == 0 and "same" in done.stdout, done.stderr[-3000:]


def test_surge_batch_over_a_folder_and_a_parquet_file_of_jpegs(repo: Path, jpegs, tmp_path: Path, capsys) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    expected = _reference_top5(jpegs)
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    names = ["a0.jpg", "a1.jpeg", "b/c2.jpg", "b/c3.JPG", "d4.jpg", "e5.jpg"]  # sorted relative paths = row order
    for name, data in zip(names, jpegs):
        (folder / name).write_bytes(data)
    (folder / "notes.txt").write_text("not an image: not a row")
    assert main(["batch", "--model-repository", str(repo), "--model", "resnet", "--input", str(folder),
                 "--output", str(tmp_path / "folder.npz"), "--chunk-rows", "4", "--quiet"]) == 0
    with np.load(tmp_path / "folder.npz") as out:
        _check_top5(out["classes"], out["scores"], expected)

    pq.write_table(pa.table({"jpeg": pa.array(jpegs, type=pa.binary())}), tmp_path / "photos.parquet")
    assert main(["batch", "--model-repository", str(repo), "--model", "resnet", "--input", str(tmp_path / "photos.parquet"),
                 "--output", str(tmp_path / "parquet.parquet"), "--quiet"]) == 0
    table = pq.read_table(tmp_path / "parquet.parquet")
    _check_top5(np.stack(table.column("classes").to_numpy(zero_copy_only=False)),
                np.stack(table.column("scores").to_numpy(zero_copy_only=False)).astype(np.float32), expected)

    (folder / "b" / "c3.JPG").write_bytes(b"broken")
    capsys.readouterr()
    assert main(["batch", "--model-repository", str(repo), "--model", "resnet", "--input", str(folder),
                 "--output", str(tmp_path / "broken.npz"), "--chunk-rows", "4", "--quiet"]) == 1
    assert re.search(r"b/c3\.JPG: not a JPEG image", capsys.readouterr().err)
