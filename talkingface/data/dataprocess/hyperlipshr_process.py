"""HR-stage preprocessing: Base data + a Base checkpoint -> the HR decoder's training data.

For every clip of the Base data (train + val + test filelists) the Base model regenerates the
face from the clip's own audio (HYPER_IMG; the reference frame per `reference_frame`, as inference
picks it: by default the clip's first frame, as in the official HR data; bfloat16 exactly when
inference uses it, see infer_bf16); the face mesh of the original
crop gives the lip mask and box (GT_MASK), the mesh of the Base output gives the decoder's sketch
(HYPER_SKETCH). The Base model runs batched in this process; the mesh and the file writing run
beside it in a pool (hr_preprocess_workers; on the CPU the Base model costs far more than the
mesh, so there they run in-process by default). Frames where the mesh finds no face get landmarks
interpolated from their neighbours; a clip with no face at all gets blank sketches and the
default lower-face lip box: never a gap, never a crash.

Layout, under `hr_root(config)` = <preprocessed_root>/hr_<img_size>/base_<sha256[:12]>/, keyed by
the content of the Base checkpoint that makes it (derived here, so no YAML edit is ever needed
between the Base and HR stages). Training Base further makes a new folder beside the old one and
never deletes the data an HR checkpoint was trained on; `hr_prune_other_bases: true` deletes the
folders of other Base checkpoints.
    state.json                 what the data was made from (Base checkpoint, settings, clips)
    <clip_id>/
        GT_IMG/k.jpg           original face crop at img_size (BGR)
        GT_MASK/k.png          mouth polygon from the mesh of GT_IMG, img_size, {0,255}
        HYPER_IMG/k.png        Base output for the same crop box, stored at its native 128 px
        HYPER_SKETCH/k.png     sketch of HYPER_IMG at 128 px (draw_sketch, 6 px lines)
        lip_boxes.npy          int32 (n, 4) x1, y1, x2, y2 (x2/y2 exclusive) in img_size pixels;
                               the default lower-face box where the mask is empty
        meta.json              n_frames and which frames had their landmarks interpolated
        .done                  written last: what the clip was made from
Frames k = 0..n-1 with no gaps. Masks and sketches are PNG because JPEG ringing around white lines
would survive the decoder's "> 0" threshold; HYPER_IMG is PNG so that the decoder trains on the
exact pixels the Base model gives it at inference.
"""
import json
import logging
import multiprocessing
import os
import shutil

import cv2
import numpy as np
import torch
from tqdm import tqdm

from talkingface.data.dataprocess.hyperlipsbase_process import run_on_main_process
from talkingface.utils.runtime import usable_cpus
from talkingface.data.dataset.clip import DONE_MARKER, SPLITS, Clip, read_filelist
from talkingface.data.dataset.hr_layout import (FORMAT_VERSION, IMAGE_FOLDERS, frame_path,  # noqa: F401
                                                hr_root, hr_size_root, resolve_base_checkpoint)
from talkingface.model import load
from talkingface.model.inputs import BASE_SIZE
from talkingface.model.generate import generate_faces
from talkingface.model.inputs import reference_index
from talkingface.utils import distributed as dist_utils
from talkingface.utils.audio import frame_mel_chunks
from talkingface.utils.distributed import is_main_process
from talkingface.utils.errors import CheckpointError, InputError
from talkingface.utils.face import FaceMesh, crop_resize
from talkingface.utils.fingerprint import checkpoint_fingerprint
from talkingface.utils.registry import PREPROCESSORS
from talkingface.utils.runtime import use_bf16
from talkingface.utils.sketch import draw_sketch, lip_box, lip_mask

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95


# ---------------------------------------------------------------------------- paths
def default_lip_box(size):
    """Lower-face box used when a frame's lip mask is empty (no face found anywhere in the clip)."""
    return (size // 4, int(size * 0.55), size - size // 4, int(size * 0.95))


# ---------------------------------------------------------------------------- landmarks
def fill_missing_landmarks(landmarks):
    """List of (468,2) arrays or None -> (float32 (n,468,2), indices that were filled).

    Frames where the mesh found no face get landmarks interpolated linearly from the nearest
    frames that have them (copied at the ends). A clip without any face gives all-NaN landmarks.
    """
    n = len(landmarks)
    found = [k for k, lm in enumerate(landmarks) if lm is not None]
    out = np.full((n, 468, 2), np.nan, dtype=np.float32)
    missing = [k for k in range(n) if landmarks[k] is None]
    if not found:
        return out, missing
    stacked = np.stack([landmarks[k] for k in found]).astype(np.float32)
    out[found] = stacked
    if missing:
        flat = stacked.reshape(len(found), -1)
        filled = np.stack([np.interp(missing, found, flat[:, j]) for j in range(flat.shape[1])], axis=1)
        out[missing] = filled.reshape(len(missing), 468, 2)
    return out, missing


def valid(landmarks):
    return landmarks is not None and bool(np.isfinite(landmarks).all())


# ---------------------------------------------------------------------------- Base output
def load_base_model(path, device):
    # channels_last: the same numbers, faster convolutions (oneDNN on the CPU, cuDNN on GPUs).
    model = load("HyperLipsBase", path).network.to(device, memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def generate_hyper_frames(model, clip, device, batch_size, bf16=False, reference="first"):
    """The Base model's output for every frame of `clip` from its own audio: uint8 (n,128,128,3).

    Inputs as inference makes them (Base inference on the clip; model.inputs): the frame with its
    lower half zeroed next to the reference frame of the `reference` policy (default the clip's
    first frame, as the official HR data), and the mel chunk of frame k (the one mel/frame
    convention). `bf16`: bfloat16 autocast, as inference runs the Base model. The generator loop
    is inference's (model.generate.generate_faces).
    """
    n = clip.n_frames
    faces = np.stack([clip.frame(k, BASE_SIZE) for k in range(n)])
    references = faces[[reference_index(reference, k, n) for k in range(n)]]
    return generate_faces(model, faces, references, frame_mel_chunks(clip.mel, n), device=device,
                          batch_size=batch_size, amp_dtype=torch.bfloat16 if bf16 else None)


# ---------------------------------------------------------------------------- ground truth
def iter_gt_frames(clip, img_size, data_root):
    """(iterator of the clip's original crops at img_size, where they come from).

    From the Base crops, or re-cut from the source video with the clip's boxes when the Base crops
    are smaller than img_size (so 256/512 training sees real detail, not upscaling). Frames are
    streamed: a long clip at 512 px never sits in memory.
    """
    base_size = stored_crop_size(clip)
    if base_size >= img_size:
        return (clip.frame(k, img_size) for k in range(clip.n_frames)), "base_crops"
    source = clip.source_video(data_root)
    if source is None:
        logger.warning("%s: source video not found; GT_IMG upscaled from the %d px Base crops", clip.id, base_size)
        return (clip.frame(k, img_size) for k in range(clip.n_frames)), "upscaled"
    return _recut_frames(clip, source, img_size), "source_video"


def _recut_frames(clip, source, img_size):
    k = 0
    for k, frame in enumerate(clip.source_frames(source), start=1):
        yield crop_resize(frame, clip.boxes[k - 1], img_size)
    if k < clip.n_frames:  # the source decodes shorter than when it was preprocessed
        logger.warning("%s: source video ended early; last %d GT frames upscaled", clip.id, clip.n_frames - k)
        for j in range(k, clip.n_frames):
            yield clip.frame(j, img_size)


def stored_crop_size(clip):
    """Side of the Base crops on disk (config["crop_size"] when they were made)."""
    if clip.meta.get("crop_size"):
        return int(clip.meta["crop_size"])
    path = os.path.join(clip.dir, "0.jpg")
    image = cv2.imread(path)
    if image is None:
        raise InputError(f"cannot read {path}: delete {clip.dir}/.done and run again to redo the clip")
    return image.shape[0]


# ---------------------------------------------------------------------------- one clip
_worker_mesh = None


def _mesh():
    """One FaceMesh per process (mediapipe graphs are not picklable, and cheap to keep)."""
    global _worker_mesh
    if _worker_mesh is None:
        _worker_mesh = FaceMesh(static_image_mode=True)
    return _worker_mesh


def write_hr_clip(job):
    """Mesh, masks, sketches and files of one clip; returns (clip_id, n_frames, summary).

    `job`: clip_dir, out_dir, img_size, data_root, hyper (uint8 (n,128,128,3)), done (the .done
    text). Runs in a pool worker or in the main process.
    """

    clip = Clip(job["clip_dir"])
    out_dir, size, hyper = job["out_dir"], int(job["img_size"]), job["hyper"]
    clip_id = clip.id
    n = min(clip.n_frames, len(hyper))
    if os.path.isdir(out_dir):  # a half-written earlier attempt
        shutil.rmtree(out_dir)
    for folder in IMAGE_FOLDERS:
        os.makedirs(os.path.join(out_dir, folder))

    # Images first (streamed), keeping only their landmarks: masks and sketches need no pixels.
    mesh = _mesh()
    jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    gt_frames, gt_source = iter_gt_frames(clip, size, job["data_root"])
    gt_found = []
    for k, frame in zip(range(n), gt_frames):
        cv2.imwrite(frame_path(out_dir, "GT_IMG", k), frame, jpeg)
        gt_found.append(mesh.landmarks(frame))
    if hasattr(gt_frames, "close"):
        gt_frames.close()
    n = len(gt_found)
    hyper_found = []
    for k in range(n):
        cv2.imwrite(frame_path(out_dir, "HYPER_IMG", k), hyper[k])
        hyper_found.append(mesh.landmarks(hyper[k]))
    gt_landmarks, gt_missing = fill_missing_landmarks(gt_found)
    hyper_landmarks, hyper_missing = fill_missing_landmarks(hyper_found)

    boxes = np.zeros((n, 4), dtype=np.int32)
    empty_masks = 0
    for k in range(n):
        gt_lm = gt_landmarks[k] if valid(gt_landmarks[k]) else None
        hyper_lm = hyper_landmarks[k] if valid(hyper_landmarks[k]) else None
        mask = lip_mask(gt_lm, size, size)
        box = lip_box(mask)
        if box is None:
            empty_masks += 1
            box = default_lip_box(size)
        boxes[k] = box
        hyper_sketch = (draw_sketch(hyper_lm, BASE_SIZE) if hyper_lm is not None
                        else np.zeros((BASE_SIZE, BASE_SIZE, 3), np.uint8))
        cv2.imwrite(frame_path(out_dir, "GT_MASK", k), mask)
        cv2.imwrite(frame_path(out_dir, "HYPER_SKETCH", k), hyper_sketch)
    np.save(os.path.join(out_dir, "lip_boxes.npy"), boxes)
    summary = {"n_frames": n, "img_size": size, "gt_source": gt_source,
               "gt_landmarks_interpolated": gt_missing if len(gt_missing) < n else "all",
               "hyper_landmarks_interpolated": hyper_missing if len(hyper_missing) < n else "all",
               "empty_lip_masks": empty_masks}
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(out_dir, DONE_MARKER), "w") as f:
        f.write(job["done"])
    return clip_id, n, summary


# ---------------------------------------------------------------------------- the preprocessor
@PREPROCESSORS.register("HyperLipsHRPreprocessor")
class HyperLipsHRPreprocessor:
    """Makes (or brings up to date) the HR data; see the module docstring for the layout."""

    def __init__(self, config):
        self.config = config

    @property
    def root(self):
        """hr_root of the Base checkpoint read now (CheckpointError without one)."""
        return hr_root(self.config)

    # -- what the data depends on
    def base_preprocessor(self):
        return PREPROCESSORS.get("HyperLipsBasePreprocessor")(self.config)

    def clip_dirs(self):
        dirs = []
        for split in SPLITS:
            dirs += [d for d in read_filelist(self.config, split) if d not in dirs]
        return dirs

    def base_bf16(self):
        """Run the Base model in bfloat16 exactly when inference does (infer_bf16), so that the
        decoder trains on the Base outputs it will be given."""
        return use_bf16(self.config["infer_bf16"], self.config["device"])

    def workers(self):
        """auto: a pool per CPU core of this rank's share when a GPU runs the Base model (the mesh
        is then the slow part), none on the CPU (there the Base model costs far more than the mesh and the pool
        only adds start-up time)."""
        setting = self.config["hr_preprocess_workers"]
        if setting == "auto":
            return usable_cpus() if self.config["device"].type == "cuda" else 0
        return setting

    def state(self, checkpoint, clip_dirs):
        return {"format": FORMAT_VERSION, "img_size": int(self.config["img_size"]),
                "base_size": BASE_SIZE, "base_bf16": self.base_bf16(),
                "reference_frame": self.config["reference_frame"],
                "base_checkpoint": checkpoint_fingerprint(checkpoint),
                "clips": sorted(os.path.basename(os.path.normpath(d)) for d in clip_dirs)}

    @staticmethod
    def clip_done_text(clip_dir):
        """A clip is redone when its Base data was rewritten since (its .done changed)."""
        stat = os.stat(os.path.join(clip_dir, DONE_MARKER))
        return json.dumps({"base_done_mtime_ns": stat.st_mtime_ns})

    def _read_state(self):
        try:
            with open(os.path.join(self.root, "state.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _clip_is_done(self, clip_dir):
        marker = os.path.join(self.root, os.path.basename(os.path.normpath(clip_dir)), DONE_MARKER)
        try:
            with open(marker) as f:
                return f.read() == self.clip_done_text(clip_dir)
        except OSError:
            return False

    def is_stale(self):
        if self.base_preprocessor().is_stale():
            return True
        try:
            checkpoint = resolve_base_checkpoint(self.config)
        except CheckpointError:
            return True  # run() says what to do
        clip_dirs = self.clip_dirs()
        if self._read_state() != self.state(checkpoint, clip_dirs):
            return True
        return not all(self._clip_is_done(d) for d in clip_dirs)

    # -- making it
    def run(self):
        """Make the missing clips. Under torchrun every rank calls it: rank 0 decides what to make,
        each rank makes its share of the clips (on its own device), all return when all are done."""
        base = self.base_preprocessor()
        if dist_utils.broadcast_object(dist_utils.is_main_process() and base.is_stale()):
            base.run()
        group = dist_utils.patient_group()  # shares differ in length: a rank may wait long for the others
        checkpoint, todo = run_on_main_process(self._plan, group)
        share = todo[dist_utils.rank()::dist_utils.world_size()]
        if share:
            self._make(share, checkpoint)
        dist_utils.all_gather_object(len(share), group)  # every share done

    def _plan(self):
        """(Base checkpoint, clip folders whose HR data is missing); resets out-of-date HR data of
        this Base checkpoint (settings or clips changed) and, with hr_prune_other_bases, deletes
        the HR data of other Base checkpoints."""
        checkpoint = resolve_base_checkpoint(self.config)
        clip_dirs = self.clip_dirs()
        state = self.state(checkpoint, clip_dirs)
        self._other_bases()
        if self._read_state() != state:
            if os.path.isdir(self.root):
                logger.info("HR data in %s is out of date (settings or clips changed): making it again", self.root)
                shutil.rmtree(self.root)
            os.makedirs(self.root)
            with open(os.path.join(self.root, "state.json"), "w") as f:
                json.dump(state, f, indent=1)
        todo = [d for d in clip_dirs if not self._clip_is_done(d)]
        if todo:
            logger.info("HR data: %d of %d clips to make in %s from %s", len(todo), len(clip_dirs),
                        self.root, checkpoint)
        return checkpoint, todo

    def _other_bases(self):
        """HR data folders of other Base checkpoints: kept and listed, or deleted when asked."""
        parent = hr_size_root(self.config)
        others = sorted(os.path.join(parent, name) for name in (os.listdir(parent) if os.path.isdir(parent) else [])
                        if name.startswith("base_") and os.path.join(parent, name) != self.root)
        if not others:
            return
        if self.config["hr_prune_other_bases"]:
            for folder in others:
                shutil.rmtree(folder)
            logger.info("deleted the HR data of %d other Base checkpoint(s) (hr_prune_other_bases)", len(others))
        else:
            logger.info("HR data of %d other Base checkpoint(s) kept in %s (HR checkpoints trained on them may "
                        "need it; --hr_prune_other_bases=true deletes it)", len(others), parent)

    def _make(self, clip_dirs, checkpoint):
        config = self.config
        device = config["device"]
        model = load_base_model(checkpoint, device)
        bf16, workers = self.base_bf16(), self.workers()
        pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 else None
        progress = tqdm(total=sum(Clip(d).n_frames for d in clip_dirs), desc="HR data", unit="frame",
                        disable=not is_main_process(), dynamic_ncols=True)
        pending, finished = [], False
        try:
            for clip_dir in clip_dirs:
                clip = Clip(clip_dir)
                job = {"clip_dir": clip_dir, "img_size": int(config["img_size"]),
                       "out_dir": os.path.join(self.root, os.path.basename(os.path.normpath(clip_dir))),
                       "data_root": config["data_root"], "done": self.clip_done_text(clip_dir),
                       "hyper": generate_hyper_frames(model, clip, device, int(config["hr_base_batch_size"]), bf16,
                                                      config["reference_frame"])}
                if pool is None:
                    self._finished(write_hr_clip(job), progress)
                    continue
                # The Base model runs here while the pool meshes and writes earlier clips.
                pending.append(pool.apply_async(write_hr_clip, (job,)))
                while len(pending) > 2 * workers or (pending and pending[0].ready()):
                    self._finished(pending.pop(0).get(), progress)
            for result in pending:
                self._finished(result.get(), progress)
            finished = True
        finally:
            progress.close()
            if pool is not None:
                pool.close() if finished else pool.terminate()
                pool.join()

    @staticmethod
    def _finished(result, progress):
        clip_id, n, summary = result
        progress.update(n)
        if summary["hyper_landmarks_interpolated"] == "all":
            logger.warning("%s: the face mesh found no face in any Base output frame (an early Base "
                           "checkpoint?); its decoder sketches are blank", clip_id)
        if summary["gt_landmarks_interpolated"] == "all":
            logger.warning("%s: the face mesh found no face in the original crops; lip boxes fall back "
                           "to the lower face", clip_id)
