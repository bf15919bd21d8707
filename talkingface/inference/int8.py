"""infer_int8: the HyperLipsBase generator's 128x128 part as one int8 graph, on the CPU.

That part (decoder.decode0, up_conv, output_block: five 3x3 convolutions and the 1x1 output
convolution) is most of the generator's time per frame. It is quantized post-training and statically (FX graph
mode, x86 engine) as ONE graph, so its activations stay int8 between the convolutions:
per-channel symmetric int8 weights, activations at 7 bits (what AVX2 CPUs without VNNI multiply
without overflow) over the min-max range seen in calibration (the engine's default histogram
observer clips outliers, which the decoder's activations tolerate less well, and calibrates
slower). `python benchmarks/bench_generator.py` reports the PSNR of exactly this function.
The rest stays fp32: hyper_control_net's kernels are predicted per sample from
the audio (no fixed weights to quantize), and the stages below 128x128 cost little.

Calibration runs on fixed inputs made here (the demo photograph's face with its mouth opening to
synthetic speech, data.dataprocess.demo), so the quantized network depends on the checkpoint
only, never on the video or the audio of a run. `python benchmarks/bench_generator.py
--checkpoint PATH` measures its speed and its PSNR against fp32 for a given checkpoint: the
margin shrinks as weights train, so measure yours before turning it on. torch.ao.quantization
announces its own deprecation (silenced here by name); when it goes, this module moves to the
PT2E quantization flow.
"""
import copy
import warnings

import numpy as np
import torch
from torch import nn

from talkingface.data.dataprocess import demo
from talkingface.data.dataset.hr_layout import BASE_SIZE
from talkingface.model.inputs import masked_input
from talkingface.utils.audio import FPS, SAMPLE_RATE, frame_mel_chunks, melspectrogram
from talkingface.utils.errors import ConfigError

ENGINE = "x86"
# torch.ao.quantization announces its own deprecation; nothing else is silenced
_API_NOTICES = (("torch.ao.quantization is deprecated", DeprecationWarning),
                ("Please use quant_min and quant_max", UserWarning),
                ("torch.quantize_per_tensor, torch.quantize_per_channel", UserWarning))


class FullResolution(nn.Module):
    """decoder.decode0 -> up_conv -> output_block of a HyperLipsBase, as one module to quantize."""

    def __init__(self, model):
        super().__init__()
        self.decode0, self.up_conv, self.output_block = model.decoder.decode0, model.up_conv, model.output_block

    def forward(self, x, source):
        return self.output_block(self.up_conv(self.decode0(x, source)))


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


def quantize_full_resolution(model, batches=None, engine=ENGINE):
    """A copy of the HyperLipsBase `model` (eval mode, CPU) whose 128x128 part is one int8 graph
    calibrated on `batches` (default: calibration_batches); the model itself is not changed."""
    if engine not in torch.backends.quantized.supported_engines:
        raise ConfigError(f"infer_int8 needs torch's {engine} quantized engine, which this torch build lacks: "
                          "set infer_int8=false")
    # lazy: the deprecated quantization package is loaded only when int8 is asked for
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    batches = calibration_batches(model) if batches is None else batches
    seen = []  # decode0's inputs, the graph's calibration data
    hook = model.decoder.decode0.register_forward_pre_hook(lambda module, args: seen.append(args))
    try:
        with torch.inference_mode():
            for audio, face, features in batches:
                model.generate(audio, face, features)
    finally:
        hook.remove()
    torch.backends.quantized.engine = engine
    qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                      weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    with warnings.catch_warnings():
        for message, category in _API_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=category)
        # the output head's sigmoid stays fp32: an int8 sigmoid has a fixed 1/256 step, a level of the image
        mapping = QConfigMapping().set_global(qconfig).set_object_type(nn.Sigmoid, None)
        prepared = prepare_fx(FullResolution(copy.deepcopy(model)).eval(), mapping, seen[0])
        with torch.inference_mode():
            for args in seen:
                prepared(*args)
        part = convert_fx(prepared)
    quantized = copy.deepcopy(model)
    quantized.decoder.decode0, quantized.up_conv, quantized.output_block = part, nn.Identity(), nn.Identity()
    return quantized
