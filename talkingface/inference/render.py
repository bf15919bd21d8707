"""Per-batch lip-sync of frames whose face box is known: crop, networks, paste back.

Base: crop -> 128 px; input = [crop with its lower half zeroed, a reference crop] (model.inputs;
the reference per `reference_frame`: the video's first face crop by default, as the HR training
data, or the frame itself, or the frame half the video away) and the output frame's mel chunk;
HyperLipsBase -> 128 px face.
HR:   face mesh of that Base output (landmarks averaged over a short centred window) -> the HR
training recipe (draw_sketch at 128 px + hyperlipshr_dataset.decoder_input, which applies
sketch_for_decoder) -> HRDecoder at its trained size.
The generated face is pasted into the frame through the soft mouth mask of the ORIGINAL crop's
face mesh (paste.py), so everything outside the mouth region keeps its pixels; the networks compute
only the rectangle of the generated faces that the batch's paste reads
(region.pasted_source_rect: Base's 128 px layers, or the HR decoder; the pasted pixels are the
whole face's). Frames without a face pass through; the face_fade_frames frames with a face on
either side of such a gap blend the pasted frame with the source frame (face_weights), so the
mouth crossfades instead of jumping.

What does not depend on the audio (crop, reference, mask, landmarks, face-encoder features) is
computed once per source frame by prepare() and, given an AvatarStore (avatar.py), kept there:
ping-pong passes, a still image's frames and later runs (the avatar cache) reuse it. The face
encoder always runs in batches of ENCODER_BATCH (padded), so its features are the same bits
whatever infer_batch_size is, and a cached avatar serves every batch size.
"""
import collections
import logging

import cv2
import numpy as np
import torch

from talkingface.inference.avatar import FaceRecord
from talkingface.inference.paste import PASTE_THRESHOLD, mouth_mask, paste_face
from talkingface.inference.profile import OFF
from talkingface.inference.silence import blend, ramp, silent_chunk
from talkingface.model.inputs import BASE_SIZE
from talkingface.data.dataset.hyperlipshr_dataset import decoder_input
from talkingface.model.audio_driven_talkingface.region import pasted_source_rect
from talkingface.model.generate import autocast, generate_faces
from talkingface.model.inputs import masked_input, reference_index
from talkingface.utils.audio import mel_chunk
from talkingface.utils.face import FaceMesh, box_to_int, crop_resize
from talkingface.utils.sketch import draw_sketch

logger = logging.getLogger(__name__)

MAX_MESH_REUSE = 5  # frames a missed face mesh of the original crop is replaced by the last one
ENCODER_BATCH = 8   # the face encoder's batch (the default infer_batch_size)


def face_weights(boxes, fade_frames):
    """float32 (n_src,) per source frame, or None when every frame with a face keeps weight 1: the
    weight of the pasted face, ramping from 1 down toward each frame without a face (NaN box row)
    over the fade_frames frames before and after it (d frames from the nearest: silence.ramp(d));
    0 where there is no face. Indexed by source frame, it fits any playback order (ping-pong)."""
    present = np.isfinite(np.asarray(boxes, np.float64)).all(axis=1) if len(boxes) else np.zeros(0, bool)
    if fade_frames <= 0 or present.all() or not present.any():
        return None
    n = len(present)
    distance = np.full(n, np.inf)
    last = -np.inf
    for i in range(n):  # to the nearest frame without a face before, then after
        if not present[i]:
            last = i
        distance[i] = i - last
    last = np.inf
    for i in range(n - 1, -1, -1):
        if not present[i]:
            last = i
        distance[i] = min(distance[i], last - i)
    weights = np.array([ramp(d, fade_frames) if present[i] else 0.0 for i, d in enumerate(distance)], np.float32)
    return None if (weights[present] == 1).all() else weights


class LipSyncRenderer:
    """Turns (output_index, source_index, frame) items into lip-synced frames, batch by batch.

    base, hr: networks on settings.device (hr None for Base only); boxes (n_src, 4) float with
    NaN rows (pass through); frame_size: (width, height) of the source frames; settings: the
    run's InferSettings (settings.py): the network batch (short batches are padded to it),
    bf16 autocast, the reference_frame policy (model.inputs), infer_mask_feather (paste-mask
    feathering as a fraction of the face size), infer_landmark_window (HR landmark smoothing,
    frames, 1 = off), face_fade_frames (the crossfade next to frames without a face:
    face_weights; 0: a jump); store: an AvatarStore keeping prepare()'s records (None: they live
    for one batch); frame_at(index): any source frame, for reference_frame=half_clip; profiler: a
    profile.StageProfiler (default off); mel (80, T) of the driving audio (or set later).
    """

    # The networks compute only the rectangle of the generated faces that the paste reads (the same
    # pasted pixels); False computes whole faces (tests compare the two).
    pasted_region_only = True

    def __init__(self, base, hr, boxes, frame_size, settings, store=None, frame_at=None, profiler=OFF, mel=None):
        # channels_last + bfloat16 is ~2x faster on CPUs with native bf16 (oneDNN kernels)
        self.base = base.to(memory_format=torch.channels_last)
        self.hr = hr.to(memory_format=torch.channels_last) if hr is not None else None
        self.mel = mel
        self.boxes = boxes
        self.width, self.height = frame_size
        self.device = settings.device
        self.batch_size = settings.batch_size
        self.feather = float(settings["infer_mask_feather"])
        self.bf16 = settings.bf16
        landmark_window, reference = settings["infer_landmark_window"], settings.reference
        self.amp_dtype = torch.bfloat16 if self.bf16 else None
        self.source_mesh = FaceMesh(static_image_mode=False)
        self.output_mesh = FaceMesh(static_image_mode=False) if hr is not None else None
        self.landmark_window = max(1, int(landmark_window))
        self.history = collections.deque(maxlen=self.landmark_window // 2)
        self.last_landmarks = None
        self.last_source_landmarks, self.source_misses = None, 0
        self.store = store
        self.profiler = profiler
        # mesh_ahead's results by source frame, in the order prepare() takes them
        self._ahead = {}
        self._ahead_seen = set()  # source frames mesh_ahead has meshed (with a store: once each)
        self.reference = None  # 128 px crop of the first face: the reference of policy "first"
        self.reference_policy, self.frame_at = reference, frame_at
        self.mesh_misses = 0
        # silence_mode (silence.py), indexed by output frame: speech (bool, "rest": the others get
        # the silent mel chunk) and weights (float, "source": 1 generated .. 0 the source frame)
        self.speech = None
        self.weights = None
        # indexed by source frame: the crossfade next to frames without a face (None: none needed)
        self.face_weights = face_weights(boxes, int(settings["face_fade_frames"]))

    def close(self):
        for mesh in (self.source_mesh, self.output_mesh):
            if mesh is not None:
                mesh.close()

    # ------------------------------------------------------------------ per source frame
    def _source_face(self, source_index, frame):
        """(int box, 128 px crop, paste mask at 128 px, crop landmarks at 128 px or None); the first
        one is also the reference of reference_frame=first."""
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
        if self.reference is None:  # reference_frame=first: the first face crop
            self.reference = crop.copy()
        # The mask is built at 128 px (cheap at any video size) and resized to the box when pasted.
        return box, crop, mouth_mask(landmarks, BASE_SIZE, BASE_SIZE, self.feather), landmarks

    def mesh_ahead(self, items):
        """The face-mesh part of prepare() (crops, meshes, masks) for the next batch render() gets,
        run in the decoding thread so that it overlaps the networks of the batch before. Called
        with every batch, in render()'s order, it meshes exactly the frames render() would, in the
        same order: the results are the same bits as without it."""
        if not self._faces(items, self._weights(items)):
            return  # render() prepares nothing for this batch
        batch = set()
        for _, src, frame in items:
            if src in batch or not np.isfinite(self.boxes[src]).all():
                continue
            batch.add(src)
            # with a store, a frame meshed once (in an earlier batch) is read from it
            if self.store is not None and (src in self._ahead_seen or self.store.ready(src)):
                continue
            self._ahead_seen.add(src)
            with self.profiler.stage("mesh_masks"):
                self._ahead.setdefault(src, collections.deque()).append(self._source_face(src, frame))

    # ------------------------------------------------------------------ networks
    def _references(self, crops, source_indices):
        """The 128 px reference crop of each frame under the reference_frame policy."""
        if self.reference_policy == "first":
            return [self.reference] * len(crops)
        if self.reference_policy == "same":
            return crops
        n = len(self.boxes)
        out = []
        for crop, src in zip(crops, source_indices):
            index = reference_index(self.reference_policy, src, n)
            box = self.boxes[index]
            if not np.isfinite(box).all():  # no face there: the frame's own crop
                out.append(crop)
                continue
            out.append(crop_resize(self.frame_at(index), box_to_int(box, self.width, self.height), BASE_SIZE))
        return out

    def _tensor(self, crops, size=None):
        padded = list(crops) + [crops[-1]] * max(0, (size or self.batch_size) - len(crops))
        return torch.from_numpy(np.stack(padded)).to(self.device).permute(0, 3, 1, 2).float().div_(255)

    def _face_input(self, crops, references, size=None):
        return masked_input(self._tensor(crops, size), self._tensor(references, size)).contiguous(
            memory_format=torch.channels_last)

    @torch.inference_mode()
    def prepare(self, items):
        """items: (source_index, frame) pairs -> {source_index: FaceRecord} for those with a face:
        taken from the store when there, else computed (face mesh, mask, face encoder) and stored."""
        records, todo = {}, []
        for src, frame in items:
            if src in records or not np.isfinite(self.boxes[src]).all():
                continue
            if self.store is not None and self.store.ready(src):
                records[src] = self.store.get(src)
                continue
            ahead = self._ahead.get(src)
            if ahead:
                box, crop, mask, landmarks = ahead.popleft()
                if not ahead:
                    del self._ahead[src]
            else:
                with self.profiler.stage("mesh_masks"):
                    box, crop, mask, landmarks = self._source_face(src, frame)
            records[src] = FaceRecord(box, crop, None, mask, landmarks)
            todo.append(src)
        if not todo:
            return records
        with self.profiler.stage("face_encoder"):
            for start in range(0, len(todo), ENCODER_BATCH):
                part = todo[start:start + ENCODER_BATCH]
                crops = [records[src].crop for src in part]
                references = self._references(crops, part)
                with autocast(self.device, self.amp_dtype):
                    features = self.base.encode_face(self._face_input(crops, references, ENCODER_BATCH))
                # stored channels-last (N, H, W, C) float32 (exact for bfloat16 too)
                features = [f.float().permute(0, 2, 3, 1).cpu().numpy() for f in features]
                for i, (src, reference) in enumerate(zip(part, references)):
                    record = records[src]
                    record.reference = reference
                    record.features = tuple(f[i] for f in features)
                    if self.store is not None:
                        self.store.put(src, record)
        return records

    @torch.inference_mode()
    def warm_up(self):
        """Run the networks once on a prepared frame (their kernels are set up on the first call,
        ~0.5 s each), so that a stream's first frames are not late; no state changes."""
        store = self.store
        index = next((i for i in range(store.n) if store.ready(i)), None) if store is not None else None
        if index is None:
            return
        record = store.get(index)
        blank = np.zeros((1, 6, BASE_SIZE, BASE_SIZE), np.float32)  # no face mesh: the mesh state stays
        return self._generate([record], [np.zeros((80, 16), np.float32)], hr_input=lambda faces: blank)

    def _pasted_rect(self, records):
        """The rectangle of the generated faces that pasting the records reads (padded batch items
        are copies of the last record, so they are covered), or None for the whole face."""
        if not self.pasted_region_only:
            return None
        masks = np.stack([r.mask for r in records])
        sides = [min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in (r.box for r in records)]
        size = self.hr.output_size if self.hr is not None else BASE_SIZE
        # None (no mask pixel pasted; mouth_mask never gives one): whole faces, so that the HR
        # landmark smoothing still sees these frames
        return pasted_source_rect(masks, sides, PASTE_THRESHOLD, size)

    def _generate(self, records, mel_chunks, hr_input=None):
        """The generated faces (N,S,S,3) uint8 for prepared records: Base, then the HR decoder on
        top (its input: hr_input, by default the sketch of each Base face's mesh); only the pasted
        rectangle holds generated pixels (_pasted_rect)."""
        return generate_faces(self.base, [r.crop for r in records], [r.reference for r in records], mel_chunks,
                              features=[r.features for r in records], device=self.device,
                              batch_size=self.batch_size, pad=True, amp_dtype=self.amp_dtype,
                              hr=self.hr, hr_input=hr_input or (lambda faces: self._hr_inputs(
                                  faces, [r.landmarks for r in records])), stage=self.profiler.stage,
                              region=self._pasted_rect(records))

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

    def _hr_inputs(self, generated, source_landmarks):
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
        return np.stack([decoder_input(image, sketch) for image, sketch in zip(generated, sketches)])

    # ------------------------------------------------------------------ a batch
    def _weights(self, items, weights=None):
        """The items' paste weights (render()), or None when every one is 1."""
        if weights is None and self.weights is not None:
            weights = [float(self.weights[k]) for k, _, _ in items]
        if self.face_weights is not None:
            weights = [(1.0 if weights is None else float(weights[i])) * float(self.face_weights[src])
                       for i, (_, src, _) in enumerate(items)]
        return weights

    def _faces(self, items, weights):
        """Indices of the items that get a generated face: a face box and a weight above 0."""
        return [k for k, (_, src, _) in enumerate(items) if np.isfinite(self.boxes[src]).all()
                and (weights is None or weights[k] > 0)]

    @torch.inference_mode()
    def render(self, items, mel_chunks=None, weights=None):
        """items: list of (output_index, source_index, frame) -> the frames, lip-synced in place;
        mel_chunks: the items' (80, 16) mel chunks when not taken from self.mel; weights: the items'
        silence_mode=source weights when not taken from self.weights (0: the frame is left as it
        is, between 0 and 1: the pasted frame blended with the source frame); they are multiplied
        by the face-gap crossfade's weights (self.face_weights, by source frame)."""
        weights = self._weights(items, weights)
        faces = self._faces(items, weights)
        if not faces:
            return [frame for _, _, frame in items]
        # every frame with a face is prepared (the reference and mesh state as with generate)
        prepared = self.prepare([(src, frame) for _, src, frame in items])
        records = [prepared[items[k][1]] for k in faces]
        if mel_chunks is None:
            chunks = [mel_chunk(self.mel, k) if self.speech is None or self.speech[k] else silent_chunk()
                      for k in (items[i][0] for i in faces)]
        else:
            chunks = [mel_chunks[i] for i in faces]
        generated = self._generate(records, chunks)
        with self.profiler.stage("paste"):
            for k, record, face in zip(faces, records, generated):
                x1, y1, x2, y2 = record.box
                mask = cv2.resize(record.mask, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
                frame = items[k][2]
                if weights is not None and weights[k] < 1:  # a crossfade frame
                    original = frame[y1:y2, x1:x2].copy()
                    paste_face(frame, record.box, face, mask)
                    frame[y1:y2, x1:x2] = blend(frame[y1:y2, x1:x2], original, weights[k])
                else:
                    paste_face(frame, record.box, face, mask)
        return [frame for _, _, frame in items]
