"""infer_backend / infer_int8 / --mode=export (model/export.py, inference/engine.py, inference/int8.py):
the ONNX graphs match torch, a run on onnxruntime matches torch fp32, int8 keeps 40 dB, and a
missing engine is one line and torch. Random-init weights (the random_base_checkpoint fixture)."""
import logging
import os
import sys

import numpy as np
import pytest
import torch

from talkingface.utils.audio import load_audio

ort = pytest.importorskip("onnxruntime")
slow = pytest.mark.slow  # one Base export is ~20 s on two cores, shared by the module's tests


def _psnr(a, b):
    mse = ((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def networks(random_base_checkpoint):
    from talkingface.model import build_network, load_network
    torch.manual_seed(1)
    return load_network("HyperLipsBase", random_base_checkpoint["path"]), build_network("HRDecoder", 2).eval()


@pytest.fixture(scope="module")
def cache(networks, random_base_checkpoint, tmp_path_factory):
    """An engine cache folder holding the Base's graphs (exported once, as the first run does)."""
    from talkingface.inference.engine import cached_graphs
    folder = tmp_path_factory.mktemp("engines")
    paths = cached_graphs("base", networks[0], random_base_checkpoint["path"], str(folder))
    return {"folder": folder, "paths": paths}


@pytest.fixture(scope="module")
def int8_generator(networks, cache):
    """The int8 generator graph as a run with infer_int8 on onnxruntime makes it (int8.int8_network:
    quantized from the cached fp32 graph, calibrated on calibration_batches' defaults), written once
    beside the cached fp32 graphs, where the pipeline test's run finds it instead of quantizing again."""
    pytest.importorskip("onnx")
    from types import SimpleNamespace

    from talkingface.inference.engine import backend_of
    from talkingface.inference.int8 import int8_network
    engine = int8_network(SimpleNamespace(network=networks[0], graph_paths=cache["paths"]), None)
    assert backend_of(engine) == "onnxruntime"
    path = os.path.join(os.path.dirname(cache["paths"]["generator"]), "generator_int8.onnx")
    assert os.path.isfile(path)
    return path


def _config(make_config, checkpoint, cache_folder, **overrides):
    return make_config("HyperLipsBase", mode="infer", checkpoint=checkpoint, infer_bf16=False,
                       infer_batch_size=4, engine_cache_dir=str(cache_folder), **overrides)


@slow
def test_exported_graphs_match_torch_at_any_batch(networks, cache, tmp_path):
    from talkingface.model.export import export_onnx
    base, hr = networks
    paths = dict(cache["paths"], **export_onnx(None, hr, str(tmp_path)))
    sessions = {graph: ort.InferenceSession(path, providers=["CPUExecutionProvider"]) for graph, path in paths.items()}
    generator = torch.Generator().manual_seed(3)
    for batch in (1, 3):  # the batch axis is dynamic: the graphs were traced at 2
        face = torch.rand(batch, 6, 128, 128, generator=generator)
        audio = torch.randn(batch, 1, 80, 16, generator=generator)
        with torch.inference_mode():
            features = base.encode_face(face)
            expected = {"face_encoder": features, "generator": [base.generate(audio, face, features)],
                        "hr_decoder": [hr(face)]}
        feeds = {"face_encoder": {"face": face.numpy()}, "hr_decoder": {"x": face.numpy()},
                 "generator": {"audio": audio.numpy(), "face": face.numpy(),
                               **{f"f{i + 1}": f.numpy() for i, f in enumerate(features)}}}
        for graph, session in sessions.items():
            outputs = session.run(None, feeds[graph])
            assert len(outputs) == len(expected[graph])
            for got, want in zip(outputs, expected[graph]):
                assert got.shape == tuple(want.shape)
                assert np.abs(got - want.numpy()).max() <= 1e-4, graph


@slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_engine_backend_runs_like_torch_fp32(backend, make_config, random_base_checkpoint, cache, lipsync_media,
                                             monkeypatch):
    pytest.importorskip(backend)
    from talkingface.inference import engine
    from talkingface.inference.engine import backend_of
    from talkingface.inference.pipeline import LipSyncer
    wav = load_audio(lipsync_media["audio"])[:6400]  # 0.4 s: 10 frames
    path = random_base_checkpoint["path"]
    reference = LipSyncer(_config(make_config, path, cache["folder"])).run(lipsync_media["video"], wav)
    # the graphs are in the cache already: loading must not export again
    monkeypatch.setattr(engine, "export_onnx", lambda *a: pytest.fail("exported again"))
    syncer = LipSyncer(_config(make_config, path, cache["folder"], infer_backend=backend)).load()
    assert backend_of(syncer.base) == backend and backend_of(reference) == "torch"
    result = syncer.run(lipsync_media["video"], wav)
    assert result.n_frames == reference.n_frames == len(result.frames) == 10
    assert _psnr(result.frames, reference.frames) >= 45


def test_missing_engine_is_one_line_and_torch(make_config, random_base_checkpoint, tmp_path, lipsync_media,
                                              monkeypatch, caplog):
    from talkingface.inference.engine import backend_of
    from talkingface.inference.pipeline import LipSyncer
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` raises ImportError
    config = _config(make_config, random_base_checkpoint["path"], tmp_path / "engines", infer_backend="onnxruntime")
    with caplog.at_level(logging.INFO, logger="talkingface"):
        syncer = LipSyncer(config).load()
    lines = [r.getMessage() for r in caplog.records if "onnxruntime" in r.getMessage()]
    assert lines == ["onnxruntime is not installed: running the networks in torch (pip install onnxruntime)"]
    assert backend_of(syncer.base) == "torch" and not (tmp_path / "engines").exists()
    result = syncer.run(lipsync_media["video"], load_audio(lipsync_media["audio"])[:3200])
    assert result.n_frames == len(result.frames) == 5


@slow
def test_int8_generator_keeps_40_db(networks, int8_generator):
    from talkingface.inference.int8 import calibration_batches, generator_feeds
    from talkingface.model.inputs import to_uint8_images
    base = networks[0]
    import onnx
    ops = {node.op_type for node in onnx.load(int8_generator).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    held_out = calibration_batches(base, n_batches=3, batch_size=8)[2:]  # frames 16..23: not calibrated on
    feed = generator_feeds(held_out)[0]
    session = ort.InferenceSession(int8_generator, providers=["CPUExecutionProvider"])
    int8 = to_uint8_images(torch.from_numpy(session.run(None, feed)[0]))
    with torch.inference_mode():
        fp32 = to_uint8_images(base.generate(*held_out[0][:2], held_out[0][2]))
    assert 40 <= _psnr(int8, fp32) < float("inf")


@slow
def test_int8_runs_through_the_pipeline_and_excludes_bf16(make_config, random_base_checkpoint, cache,
                                                          int8_generator, lipsync_media):
    from talkingface.inference.engine import backend_of
    from talkingface.inference.pipeline import LipSyncer
    from talkingface.utils.errors import ConfigError
    wav = load_audio(lipsync_media["audio"])[:3200]
    syncer = LipSyncer(_config(make_config, random_base_checkpoint["path"], cache["folder"],
                               infer_backend="onnxruntime")).load()
    fp32 = syncer.run(lipsync_media["video"], wav)
    int8 = syncer.run(lipsync_media["video"], wav, infer_int8=True)
    assert backend_of(syncer.networks(syncer.settings(infer_int8=True))[0]) == "onnxruntime"
    assert len(int8.frames) == len(fp32.frames) == 5
    assert 40 <= _psnr(int8.frames, fp32.frames) < float("inf")  # int8 ran, and kept the rule
    with pytest.raises(ConfigError, match="exclude each other"):
        syncer.run(lipsync_media["video"], wav, infer_int8=True, infer_bf16=True)


def test_export_mode_with_a_bad_checkpoint_is_one_line(make_config, tmp_path):
    from talkingface.quick_start.export_mode import run_export
    from talkingface.utils.errors import CheckpointError
    config = make_config("HyperLipsBase", mode="export", checkpoint=str(tmp_path / "missing.pth"),
                         output=str(tmp_path / "onnx"))
    with pytest.raises(CheckpointError) as error:
        run_export(config)
    assert "\n" not in str(error.value) and "missing.pth" in str(error.value)
    assert not (tmp_path / "onnx").exists()
    from talkingface.utils.errors import ConfigError
    with pytest.raises(ConfigError, match="--mode=export works with --model=HyperLipsBase or --model=HyperLipsHR"):
        run_export(make_config("SyncNet", mode="export"))
