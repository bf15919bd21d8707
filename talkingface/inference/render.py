"""Per-batch lip-sync of frames whose face box is known: crop, networks, paste back.

Base: crop -> 128 px; input = [crop with its lower half zeroed, the video's first face crop as
reference] (as the official inference and the HR training data do: a fixed reference never shows
the target frame's own mouth) and the output frame's mel chunk;
HyperLipsBase -> 128 px face.
HR:   face mesh of that Base output (landmarks averaged over a short centred window) -> the HR
training recipe (draw_sketch at 128 px + hyperlipshr_dataset.decoder_input, which applies
sketch_for_decoder) -> HRDecoder at its trained size.
The generated face is pasted into the frame through the soft mouth mask of the ORIGINAL crop's
face mesh (paste.py), so everything outside the mouth region keeps its pixels.
"""
import collections
import contextlib
import logging

import cv2
import numpy as np
import torch

from talkingface.inference.paste import mouth_mask, paste_face
from talkingface.utils.audio import mel_chunk
from talkingface.utils.face import FaceMesh, box_to_int, crop_resize
from talkingface.utils.sketch import draw_sketch

logger = logging.getLogger(__name__)

BASE_SIZE = 128
MAX_MESH_REUSE = 5  # frames a missed face mesh of the original crop is replaced by the last one


def to_uint8_images(tensor):
    """(N,3,H,W) float [0,1] -> (N,H,W,3) uint8, rounded as the HR data preprocessing does."""
    return tensor.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class LipSyncRenderer:
    """Turns (output_index, source_index, frame) items into lip-synced frames, batch by batch.

    base, hr: networks on `device` (hr None for Base only); mel (80, T) of the driving audio;
    boxes (n_src, 4) float with NaN rows (pass through); feather: paste-mask feathering as a
    fraction of the face size; landmark_window: HR landmark smoothing (frames, 1 = off);
    bf16: run the networks under bfloat16 autocast; batch_size: the network batch (short batches
    are padded to it).
    """

    def __init__(self, base, hr, mel, boxes, frame_size, device, batch_size=8, feather=0.06,
                 landmark_window=3, bf16=False, cache_masks=False):
        # channels_last + bfloat16 is ~2x faster on CPUs with native bf16 (oneDNN kernels)
        self.base = base.to(memory_format=torch.channels_last)
        self.hr = hr.to(memory_format=torch.channels_last) if hr is not None else None
        self.mel = mel
        self.boxes = boxes
        self.width, self.height = frame_size
        self.device = device
        self.batch_size = int(batch_size)
        self.feather = float(feather)
        self.bf16 = bool(bf16)
        self.source_mesh = FaceMesh(static_image_mode=False)
        self.output_mesh = FaceMesh(static_image_mode=False) if hr is not None else None
        self.landmark_window = max(1, int(landmark_window))
        self.history = collections.deque(maxlen=self.landmark_window // 2)
        self.last_landmarks = None
        self.last_source_landmarks, self.source_misses = None, 0
        self.cache_masks = cache_masks  # a still image: one crop, one mask for every frame
        self._source_cache = {}
        self.reference = None  # 128 px crop of the first face: the generator's reference frame
        self.mesh_misses = 0
        if hr is not None:
            from talkingface.data.dataset.hyperlipshr_dataset import decoder_input
            self._decoder_input = decoder_input

    def close(self):
        for mesh in (self.source_mesh, self.output_mesh):
            if mesh is not None:
                mesh.close()

    # ------------------------------------------------------------------ per source frame
    def _source_face(self, source_index, frame):
        """(int box, 128 px crop, paste mask at box size, crop landmarks at 128 px or None)."""
        if source_index in self._source_cache:
            return self._source_cache[source_index]
        box = box_to_int(self.boxes[source_index], self.width, self.height)
        crop = crop_resize(frame, box, BASE_SIZE)
        landmarks = self.source_mesh.landmarks(crop)
        if landmarks is None:
            self.mesh_misses += 1
            # a brief miss reuses the last mesh (box-relative, so it still fits); after that,
            # mouth_mask falls back to a fixed soft ellipse
            if self.source_misses < MAX_MESH_REUSE:
                landmarks = self.last_source_landmarks
            self.source_misses += 1
        else:
            self.source_misses = 0
            self.last_source_landmarks = landmarks
        # The mask is built at 128 px (cheap at any video size) and resized to the box.
        mask = mouth_mask(landmarks, BASE_SIZE, BASE_SIZE, self.feather)
        w, h = box[2] - box[0], box[3] - box[1]
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        result = (box, crop, mask, landmarks)
        if self.cache_masks:
            self._source_cache[source_index] = result
        return result

    # ------------------------------------------------------------------ networks
    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _padded(self, items):
        """A short batch padded with copies of its last item: the networks then always see one
        batch shape, so their kernels are set up once (a new shape costs ~0.5 s of CPU each)."""
        return list(items) + [items[-1]] * max(0, self.batch_size - len(items))

    def _base(self, crops, output_indices):
        n = len(crops)
        faces = torch.from_numpy(np.stack(self._padded(crops))).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        target = faces.clone()
        target[:, :, BASE_SIZE // 2:] = 0
        reference = torch.from_numpy(self.reference).to(self.device).permute(2, 0, 1).float().div_(255)
        faces = reference.unsqueeze(0).expand_as(target)
        audio = np.stack([mel_chunk(self.mel, k) for k in self._padded(output_indices)])[:, None]
        audio = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).to(self.device)
        face = torch.cat([target, faces], 1).contiguous(memory_format=torch.channels_last)
        with self._autocast():
            return to_uint8_images(self.base(audio, face)[:n])

    def _smoothed(self, landmarks):
        """Centred moving average over this batch plus the previous batch's last frames
        (entries that are None stay None and are left out of their neighbours' averages)."""
        half = self.landmark_window // 2
        seq = list(self.history) + landmarks
        start = len(self.history)
        out = []
        for i in range(start, len(seq)):
            window = [seq[j] for j in range(max(0, i - half), min(len(seq), i + half + 1))
                      if seq[j] is not None]
            out.append(None if seq[i] is None else np.mean(window, axis=0).astype(np.float32))
        self.history.extend(landmarks)
        return out

    def _hr(self, generated, source_landmarks):
        landmarks = []
        for image, fallback in zip(generated, source_landmarks):
            found = self.output_mesh.landmarks(image)
            if found is None:  # the Base face is aligned with its crop: the crop's mesh is close
                self.mesh_misses += 1
                found = fallback if fallback is not None else self.last_landmarks
            if found is not None:
                self.last_landmarks = found
            landmarks.append(found)
        blank = np.zeros((BASE_SIZE, BASE_SIZE, 3), np.uint8)  # no mesh at all: as in the HR training data
        sketches = [draw_sketch(lm, BASE_SIZE) if lm is not None else blank for lm in self._smoothed(landmarks)]
        inputs = np.stack(self._padded([self._decoder_input(image, sketch)
                                        for image, sketch in zip(generated, sketches)]))
        with self._autocast():
            x = torch.from_numpy(inputs).to(self.device).contiguous(memory_format=torch.channels_last)
            return to_uint8_images(self.hr(x)[:len(generated)])

    # ------------------------------------------------------------------ a batch
    @torch.inference_mode()
    def render(self, items):
        """items: list of (output_index, source_index, frame) -> the frames, lip-synced in place."""
        faces = [(k, item) for k, item in enumerate(items) if np.isfinite(self.boxes[item[1]]).all()]
        if not faces:
            return [frame for _, _, frame in items]
        sources = [self._source_face(src, frame) for _, (_, src, frame) in faces]
        if self.reference is None:
            self.reference = sources[0][1].copy()
        generated = self._base([s[1] for s in sources], [out for _, (out, _, _) in faces])
        if self.hr is not None:
            generated = self._hr(generated, [s[3] for s in sources])
        for (_, (_, _, frame)), (box, _, mask, _), face in zip(faces, sources, generated):
            paste_face(frame, box, face, mask)
        return [frame for _, _, frame in items]
