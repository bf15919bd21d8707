"""infer_backend: the networks run by a CPU inference engine instead of torch.

The engine runs the ONNX graphs of model/export.py. EngineBase and EngineHR keep the call
interface the renderer uses (encode_face, generate, the HR decoder's forward, torch tensors in and
out), so inference, the API, streaming, the app and evaluation run them unchanged; they hold the
torch network too, for what reads its weights or attributes (the avatar cache key, rescaling).
Engines take fp32 inputs: under an engine, infer_bf16 does not apply (settings.precision).

Exported graphs are cached per checkpoint file (its sha256) in engine_cache_dir, so a
later run only loads them. A missing engine is one log line, and the networks stay in torch.
"""
import logging
import os

import numpy as np
import torch
from torch import nn

from talkingface.model.export import EXPORT_VERSION, GRAPH_INPUTS, export_onnx, graph_file
from talkingface.utils.errors import ConfigError
from talkingface.utils.fingerprint import file_sha256

logger = logging.getLogger(__name__)

def engine_module(backend):
    """The engine's Python package, or None (with one log line) when it is not installed."""
    try:
        if backend == "onnxruntime":
            import onnxruntime
            return onnxruntime
        import openvino
        return openvino
    except ImportError:
        logger.warning("%s is not installed: running the networks in torch (pip install %s)", backend, backend)
        return None


class Session:
    """One ONNX graph on an engine: __call__(numpy arrays by input name) -> list of numpy outputs."""

    def __init__(self, module, backend, path):
        self.backend = backend
        if backend == "onnxruntime":
            options = module.SessionOptions()
            options.graph_optimization_level = module.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = module.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            # f32: the engine's own bf16 default on some CPUs would change the crops
            self.session = module.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def __call__(self, inputs):
        if self.backend == "onnxruntime":
            return self.session.run(None, inputs)
        results = self.session(inputs)
        return [results[output] for output in self.session.outputs]


def _cut(images, region):
    top, bottom, left, right = region
    return images[..., top:bottom, left:right].contiguous()


def _array(tensor):
    return np.ascontiguousarray(tensor.detach().float().cpu().numpy())


class EngineBase(nn.Module):
    """A HyperLipsBase whose encode_face and generate run on an engine (`network`: the torch one)."""

    def __init__(self, network, sessions, backend, graph_paths=None):
        super().__init__()
        self.network, self.sessions, self.backend = network, sessions, backend
        self.graph_paths = graph_paths or {}  # {graph: its fp32 ONNX file}, for infer_int8 to start from

    def state_dict(self, *args, **kwargs):  # the weights are the torch network's
        return self.network.state_dict(*args, **kwargs)

    def encode_face(self, face):
        return tuple(torch.from_numpy(f) for f in self.sessions["face_encoder"]({"face": _array(face)}))

    def generate(self, audio, face, features, region=None):
        """As HyperLipsBase.generate; a region (top, bottom, left, right) is cut from the whole output."""
        names = GRAPH_INPUTS["generator"]
        arrays = [_array(audio), _array(face)] + [_array(f) for f in features]
        out = torch.from_numpy(self.sessions["generator"](dict(zip(names, arrays)))[0])
        return out if region is None else _cut(out, region)

    def forward(self, audio, face):
        return self.generate(audio, face, self.encode_face(face))


class EngineHR(nn.Module):
    """An HRDecoder running on an engine (`network`: the torch one)."""

    def __init__(self, network, session, backend):
        super().__init__()
        self.network, self.session, self.backend = network, session, backend
        self.rescaling = network.rescaling

    @property
    def output_size(self):
        return self.network.output_size

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def forward(self, x):
        return torch.from_numpy(self.session({"x": _array(x)})[0])

    def forward_region(self, x, region):
        return _cut(self.forward(x), region)


def backend_of(network):
    """The backend a loaded network runs on: an engine's name, or "torch"."""
    return getattr(network, "backend", "torch")


def cached_graphs(network_kind, network, checkpoint, cache_dir):
    """{graph: path} of `network`'s ONNX graphs in the cache, exported first when not there yet.
    network_kind: "base" or "hr"; the folder is named by the checkpoint file's sha256."""
    folder = os.path.join(cache_dir, f"{file_sha256(checkpoint)}-v{EXPORT_VERSION}")
    base, hr = (network, None) if network_kind == "base" else (None, network)
    graphs = ("face_encoder", "generator") if base is not None else ("hr_decoder",)
    paths = {graph: graph_file(folder, graph, hr) for graph in graphs}
    if not all(os.path.isfile(p) for p in paths.values()):
        logger.info("exporting %s to ONNX in %s (once per checkpoint)", type(network).__name__, folder)
        try:
            paths = export_onnx(base, hr, folder)
        except OSError as exc:
            raise ConfigError(f"cannot write the ONNX graphs into {folder} ({exc.strerror or exc}): "
                              "set engine_cache_dir to a writable folder") from None
    return paths


def engine_networks(backend, base, hr, base_path, hr_path, cache_dir):
    """(base, hr) running on `backend` (hr None stays None), or the torch networks unchanged when
    the engine is not installed (one log line)."""
    module = engine_module(backend)
    if module is None:
        return base, hr
    paths = cached_graphs("base", base, base_path, cache_dir)
    sessions = {graph: Session(module, backend, path) for graph, path in paths.items()}
    engine_base = EngineBase(base, sessions, backend, paths)
    engine_hr = None
    if hr is not None:
        path = cached_graphs("hr", hr, hr_path, cache_dir)["hr_decoder"]
        engine_hr = EngineHR(hr, Session(module, backend, path), backend)
    logger.info("networks run on %s", backend)
    return engine_base, engine_hr
