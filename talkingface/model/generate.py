"""The one generator loop: HyperLipsBase (and an HR decoder on top) over batches of face crops.

Inference (inference/render.py, one batch per call), the HR training data
(data/dataprocess/hyperlipshr_process.generate_hyper_frames, a whole clip) and the learning check
(HyperLipsBaseTrainer.generate_clip, a whole clip) all run the generator through
`generate_faces`, so they feed it the same tensors (model.inputs) under the same precision.
"""
import contextlib

import numpy as np
import torch

from talkingface.model.inputs import masked_input, to_uint8_images


def images_to_tensor(images, device):
    """uint8 (N,H,W,3) BGR -> float (N,3,H,W) in [0,1] on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255)


def autocast(device, amp_dtype):
    """torch.autocast in `amp_dtype` on `device`'s type, or nothing when amp_dtype is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)


def _padded(array, size):
    """`array` (N, ...) with copies of its last item appended up to `size` items."""
    if len(array) >= size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def _painted(canvas, region, images):
    """uint8 (m, S, S, 3) `canvas` with the `region` rectangle replaced by `images` (m,3,h,w) [0,1]."""
    top, bottom, left, right = region
    canvas[:, top:bottom, left:right] = to_uint8_images(images)
    return canvas


def _no_stage(name):
    return contextlib.nullcontext()


@torch.inference_mode()
def generate_faces(base, crops, references, mel_chunks, *, device, batch_size, amp_dtype=None, features=None,
                   pad=False, hr=None, hr_input=None, stage=_no_stage, region=None):
    """The generated faces, uint8 (n, S, S, 3) BGR (S: 128, or the HR decoder's output_size).

    base: HyperLipsBase (or its int8 copy: anything with encode_face and generate) on `device`;
    crops, references: uint8 (n, 128, 128, 3) BGR, the target crops (their lower half is masked
    here) and each one's reference crop; mel_chunks: (n, 80, 16) float, frame by frame;
    features: per item the face encoder's maps (NHWC float32, as inference's avatar keeps them),
    None to compute them here; batch_size: frames per network call; pad: pad a short batch with
    copies of its last item (the networks then always see one batch shape, so their kernels are
    set up once); amp_dtype: autocast dtype (torch.bfloat16, ...) or None for float32;
    hr, hr_input: an HR decoder run on top, and hr_input(base_faces uint8 (m,128,128,3)) ->
    float32 (m, 6, 128, 128) its input (inference: sketch of the Base face's mesh); stage(name):
    a context timing "audio_decoder" (Base), "hr_mesh" (hr_input) and "hr_decoder";
    region: (top, bottom, left, right) of the S x S output, the only pixels computed (the rest of
    each face is the input crop for Base, black for HR: for a caller that reads nothing else, as
    inference's paste), None for the whole face. With HR, Base still runs whole: the HR input is the
    face mesh of the whole Base face.
    """
    n = len(crops)
    outputs = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        size = batch_size if pad else stop - start
        with stage("audio_decoder"):
            face = masked_input(images_to_tensor(_padded(np.asarray(crops[start:stop]), size), device),
                                images_to_tensor(_padded(np.asarray(references[start:stop]), size), device))
            face = face.contiguous(memory_format=torch.channels_last)
            audio = _padded(np.asarray(mel_chunks[start:stop], dtype=np.float32), size)[:, None]
            audio = torch.from_numpy(np.ascontiguousarray(audio)).to(device)
            if features is not None:
                maps = [_padded(np.stack([f[i] for f in features[start:stop]]), size)
                        for i in range(len(features[start]))]
                maps = [torch.from_numpy(m).to(device).permute(0, 3, 1, 2).to(amp_dtype or torch.float32)
                        for m in maps]
            with autocast(device, amp_dtype):
                maps = maps if features is not None else base.encode_face(face)
                if region is None or hr is not None:
                    faces = to_uint8_images(base.generate(audio, face, maps)[:stop - start])
                else:
                    faces = _painted(np.array(crops[start:stop]), region,
                                     base.generate(audio, face, maps, region=tuple(region))[:stop - start])
        if hr is not None:
            with stage("hr_mesh"):
                x = _padded(np.asarray(hr_input(faces), dtype=np.float32), size)
            with stage("hr_decoder"), autocast(device, amp_dtype):
                x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
                if region is None:
                    faces = to_uint8_images(hr(x)[:stop - start])
                else:
                    faces = _painted(np.zeros((stop - start, hr.output_size, hr.output_size, 3), np.uint8),
                                     region, hr.forward_region(x, tuple(region))[:stop - start])
        outputs.append(faces)
    if not outputs:
        raise ValueError("generate_faces needs at least one crop")
    return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
