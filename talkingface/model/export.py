"""ONNX export of the inference networks, with a dynamic batch axis.

    from talkingface.model.export import export_onnx
    paths = export_onnx(base, hr, "exported/")  # {"face_encoder": ..., "generator": ..., "hr_decoder": ...}

Three graphs, cut where the renderer (inference/render.py) calls the networks:
  face_encoder: face (N,6,128,128) -> f1, f2, f3, f4   (HyperLipsBase.encode_face)
  generator:    audio (N,1,80,16), face, f1..f4 -> (N,3,128,128)   (HyperLipsBase.generate)
  hr_decoder:   x (N,6,128,128) -> (N,3,S,S)   (HRDecoder.forward, S = 128/256/512)

The hyper-convolutions run the batch as ONE convolution with groups = N (hyper.BatchConv2d), and
an ONNX Conv's group count is fixed in the graph: the exported copy computes the same per-sample
3x3 convolution as a batched matrix product over the 9 shifted copies of the input instead, so
the batch stays dynamic. The networks themselves are not changed.
"""
import copy
import io
import os
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from talkingface.model.audio_driven_talkingface.hyper import BatchConv2d
from talkingface.model.inputs import BASE_SIZE
from talkingface.utils.files import write_atomic

OPSET = 17
EXPORT_VERSION = 1  # part of the engine cache's folder names: raise it when the graphs' interface changes
GRAPH_INPUTS = {
    "face_encoder": ["face"],
    "generator": ["audio", "face", "f1", "f2", "f3", "f4"],
    "hr_decoder": ["x"],
}
GRAPH_OUTPUTS = {"face_encoder": ["f1", "f2", "f3", "f4"], "generator": ["image"], "hr_decoder": ["image"]}


class ShiftedBatchConv2d(nn.Module):
    """hyper.BatchConv2d (3x3, padding 1, per-sample kernels) without a batch-sized group count:
    out[n] = kernel[n] (cout, cin*9) @ the 9 shifted copies of x[n] (cin*9, H*W) + bias[n]."""

    def __init__(self, conv):
        super().__init__()
        self.conv = conv

    def forward(self, x, code):
        conv = self.conv
        n, _, h, w = x.shape
        k, p = conv.kernel_size, conv.padding
        kernel = conv.hyperkernel(code).reshape(n, conv.cout, conv.cin * k * k)
        bias = conv.hyperbias(code).reshape(n, conv.cout, 1)
        padded = F.pad(x, (p, p, p, p))
        shifts = [padded[:, :, i:i + h, j:j + w] for i in range(k) for j in range(k)]
        patches = torch.stack(shifts, dim=2).reshape(n, conv.cin * k * k, h * w)  # index c*9 + (3i + j)
        return (torch.bmm(kernel, patches) + bias).reshape(n, conv.cout, h, w)


class _Graph(nn.Module):
    """One exported graph: a network method as forward."""

    def __init__(self, network, method):
        super().__init__()
        self.network, self.method = network, method

    def forward(self, *args):
        if self.method == "encode_face":
            return tuple(self.network.encode_face(*args))
        if self.method == "generate":
            audio, face, *features = args
            return self.network.generate(audio, face, features)
        return self.network(*args)


def exportable_base(base):
    """A CPU fp32 eval copy of a HyperLipsBase whose hyper-convolutions export with a dynamic batch."""
    base = _cpu_copy(base)
    for name, module in list(base.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BatchConv2d):
                setattr(module, child_name, ShiftedBatchConv2d(child))
    return base


def _cpu_copy(network):
    return copy.deepcopy(network).float().cpu().eval().to(memory_format=torch.contiguous_format)


def example_inputs(graph, batch=2, generator_features=None):
    """Random inputs of `graph` (batch `batch`); the generator's features come from the encoder."""
    generator = torch.Generator().manual_seed(0)
    face = torch.rand(batch, 6, BASE_SIZE, BASE_SIZE, generator=generator)
    if graph == "face_encoder":
        return (face,)
    if graph == "hr_decoder":
        return (torch.rand(batch, 6, BASE_SIZE, BASE_SIZE, generator=generator),)
    audio = torch.randn(batch, 1, 80, 16, generator=generator)
    return (audio, face, *generator_features)


def graph_bytes(network, graph, inputs):
    """The ONNX model (bytes) of `graph` of `network` traced on `inputs`, batch axis dynamic."""
    method = {"face_encoder": "encode_face", "generator": "generate", "hr_decoder": "forward"}[graph]
    names_in, names_out = GRAPH_INPUTS[graph], GRAPH_OUTPUTS[graph]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter (no onnxscript needed) announces its own deprecation and tracer notes
        warnings.simplefilter("ignore")
        torch.onnx.export(_Graph(network, method), inputs, buffer, dynamo=False, opset_version=OPSET,
                          input_names=names_in, output_names=names_out,
                          dynamic_axes={name: {0: "batch"} for name in names_in + names_out})
    return buffer.getvalue()


def export_graphs(base, hr=None):
    """{graph name: ONNX bytes} for a HyperLipsBase `base` and an HRDecoder `hr` (either may be None)."""
    out = {}
    if base is not None:
        base = exportable_base(base)
        face = example_inputs("face_encoder")
        with torch.no_grad():
            features = base.encode_face(*face)
        out["face_encoder"] = graph_bytes(base, "face_encoder", face)
        out["generator"] = graph_bytes(base, "generator", example_inputs("generator", generator_features=features))
    if hr is not None:
        out["hr_decoder"] = graph_bytes(_cpu_copy(hr), "hr_decoder", example_inputs("hr_decoder"))
    return out


def graph_file(folder, graph, hr=None):
    """The file name of `graph` in `folder` (the HR decoder's carries its output size)."""
    name = f"hr_decoder_{hr.output_size}" if graph == "hr_decoder" else graph
    return os.path.join(folder, f"{name}.onnx")


def export_onnx(base, hr, folder):
    """Write the graphs of `base` and `hr` (either may be None) into `folder`, atomically; {graph: path}."""
    paths = {}
    for graph, data in export_graphs(base, hr).items():
        paths[graph] = graph_file(folder, graph, hr)
        write_atomic(paths[graph], lambda f, data=data: f.write(data), binary=True)
    return paths
