"""infer_int8: the HyperLipsBase generator in int8 through onnxruntime's quantizer, on the CPU.

The generator's ONNX graph (model/export.py) is quantized post-training and statically by
onnxruntime.quantization (QDQ format): every convolution with fixed weights gets per-channel int8
weights and uint8 activations over the min-max range seen in calibration. The hyper-convolutions
stay fp32: their kernels are predicted per sample from the audio (no fixed weights to quantize).
The face encoder stays fp32 (its features are computed once per video frame, and cached).

Calibration runs on fixed inputs made here (the demo photograph's face with its mouth opening to
synthetic speech, data.dataprocess.demo), so the quantized graph depends on the checkpoint only,
never on the video or the audio of a run; it is kept in engine_cache_dir under the weights'
sha256. Generated crops against fp32 (`python benchmarks/bench_engine.py --int8 [--checkpoint
PATH]`): 65.6 dB PSNR with random weights, 53.8 dB with make demo's HyperLipsBase checkpoint
(>= 40 dB is the rule to keep it); the margin shrinks as weights train, so measure yours.
Without onnxruntime (and onnx, which its quantizer needs) the networks stay in torch fp32 (one line).
"""
import importlib.util
import logging
import os

import numpy as np
import torch

from talkingface.data.dataprocess import demo
from talkingface.model.inputs import BASE_SIZE
from talkingface.inference.engine import EngineBase, Session, engine_module
from talkingface.inference.prepare import weights_digest
from talkingface.model.export import GRAPH_INPUTS, export_onnx, graph_file
from talkingface.model.inputs import masked_input
from talkingface.utils.audio import FPS, SAMPLE_RATE, frame_mel_chunks, melspectrogram
from talkingface.utils.files import temp_name

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ["Conv"]  # the MatMuls of the hyper-convolutions multiply two activations: fp32


def calibration_batches(model, n_batches=2, batch_size=8, wav=None):
    """[(audio, face, encode_face(face))] of consecutive synthetic frames: the demo photograph's
    face, masked and paired with its first crop (reference_frame=first), its mouth opening with
    the speech `wav` (16 kHz; default: the demo's synthetic speech), and that speech's mel."""
    n = n_batches * batch_size
    if wav is None:
        wav = demo.synthesize_speech(n / FPS + 1, np.random.default_rng(demo.BASE_SEED))
    wav = np.tile(wav, int(np.ceil((n / FPS + 1) * SAMPLE_RATE / len(wav))))
    openness, photo = demo.frame_openness(wav, n), demo.astronaut_bgr()
    crops = np.stack([demo.render_frame(photo, float(openness[k]), (2.0 * np.sin(0.6 * np.pi * k / FPS), 0.0),
                                         BASE_SIZE)
                      for k in range(n)])
    crops = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255)
    face = masked_input(crops, crops[:1]).contiguous(memory_format=torch.channels_last)
    audio = torch.from_numpy(frame_mel_chunks(melspectrogram(wav), n))[:, None]
    with torch.inference_mode():
        return [(audio[i:i + batch_size], face[i:i + batch_size], model.encode_face(face[i:i + batch_size]))
                for i in range(0, n, batch_size)]


def generator_feeds(batches):
    """calibration_batches as the generator graph's inputs (numpy by input name)."""
    return [dict(zip(GRAPH_INPUTS["generator"], [audio.numpy(), face.contiguous().numpy()]
                     + [f.contiguous().numpy() for f in features])) for audio, face, features in batches]


def quantize_generator(fp32_path, int8_path, batches):
    """Write the int8 copy of the generator graph `fp32_path` to `int8_path` (atomically),
    calibrated on `batches` (calibration_batches)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(generator_feeds(batches))

        def get_next(self):
            return next(self.feeds, None)

    prepared, tmp = str(temp_name(int8_path, ".pre.onnx")), str(temp_name(int8_path, ".onnx"))
    try:
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, tmp, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTIZED_OPS, calibrate_method=CalibrationMethod.MinMax)
        os.replace(tmp, int8_path)
    finally:
        for path in (prepared, tmp):
            if os.path.exists(path):
                os.remove(path)


def int8_network(base, cache_dir):
    """The Base a run with infer_int8 uses: its generator in int8 and its face encoder in fp32 on
    onnxruntime (an EngineBase), quantized once per set of weights and kept in `cache_dir`; the
    torch `base` itself when onnxruntime or onnx is not installed (one log line)."""
    module = engine_module("onnxruntime")
    # onnxruntime's quantizer reads and writes the graphs with the onnx package
    if module is not None and importlib.util.find_spec("onnx") is None:
        logger.warning("onnx is not installed: running the networks in torch (pip install onnx)")
        module = None
    network = getattr(base, "network", base)  # the torch network behind an engine's
    if module is None:
        return network
    fp32 = getattr(base, "graph_paths", None)  # an engine's graphs, already exported
    if fp32:
        folder = os.path.dirname(fp32["generator"])
    else:
        folder = os.path.join(cache_dir, f"int8-{weights_digest(network)}")
        fp32 = {graph: graph_file(folder, graph) for graph in ("face_encoder", "generator")}
        if not all(os.path.isfile(path) for path in fp32.values()):
            fp32 = export_onnx(network, None, folder)
    int8_path = os.path.join(folder, "generator_int8.onnx")
    if not os.path.isfile(int8_path):
        logger.info("infer_int8: quantizing the Base generator with onnxruntime (once per checkpoint)")
        quantize_generator(fp32["generator"], int8_path, calibration_batches(network))
    sessions = {"face_encoder": Session(module, "onnxruntime", fp32["face_encoder"]),
                "generator": Session(module, "onnxruntime", int8_path)}
    return EngineBase(network, sessions, "onnxruntime")
