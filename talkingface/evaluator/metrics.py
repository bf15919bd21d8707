"""Metrics of generated talking faces, registered by name in METRICS (chosen by `metrics:` in YAML).

Every metric compares a generated clip with its ground truth at the same size and takes the
clip's driving audio (the reconstruction setting). Definitions, so a paper table can state them:
- PSNR, SSIM: on the whole generated face crop vs the ground-truth crop at the same size, every
  frame, RGB values 0..255 as float (data_range 255; channel order does not change either value).
  PSNR with torchmetrics; SSIM as torchmetrics defines it (11x11 Gaussian window, sigma 1.5, as
  Wang et al. 2004) but computed in float64 with OpenCV (`ssim_frames`, checked against torchmetrics
  in the tests): exactly 1 for identical frames, and fast on a CPU.
  Per clip = mean over frames; identical frames give PSNR inf and SSIM 1.
- LMD: mediapipe face mesh on both frames, the 40 lip landmarks (FACEMESH_LIPS), mean Euclidean
  distance between corresponding points divided by the crop side (so 0.01 = 1% of the crop;
  multiply by 256 for pixels at 256x256). No alignment (both crops come from the same box).
  Frames where the mesh misses a face on either side are skipped and counted (LMD-skipped).
- LipJitter: temporal stability of the mouth. With the same lip landmarks, the velocity of each
  point between consecutive frames, generated minus real: the mean Euclidean norm of that
  difference divided by the crop side. 0 when the generated lips move exactly as the real ones
  (a real clip against itself); a mouth that shakes from frame to frame raises it even where its
  mean position is right (a constant offset leaves it at 0, LMD does not). The mesh runs on each
  frame independently (no tracking, which would smooth the jitter away).
- LSE-C / LSE-D: official SyncNet (syncnet_v2) confidence and distance (see model/syncnet_v2.py, model/av_sync.py).
- SyncScore-C / SyncScore-D: the same procedure with the project's own lip-sync expert
  (model/expert_windows.py); NOT comparable with published LSE numbers, hence the different name.
- FID: Frechet distance between InceptionV3 pool3 features of all generated and all real frames
  (inception.py); a dataset-level number, not per clip.
The `-offset`, `-D@0` and `-C@0` companions of LSE/SyncScore are the best audio offset (frames) and
the distance / confidence at offset 0, which (unlike -C/-D) get worse when audio is out of sync.
"""
import logging
import os
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from talkingface.config.configurator import resolve_device
from talkingface.evaluator import inception
from talkingface.model import av_sync, expert_windows, load, syncnet_v2
from talkingface.utils.checkpoint import stage_checkpoint
from talkingface.utils.errors import CheckpointError
from talkingface.utils.face import FaceMesh
from talkingface.utils.registry import METRICS

logger = logging.getLogger(__name__)

# One line per reported key, copied into metrics.json so the numbers carry their definitions.
METRICS_DOC = {
    "PSNR": "dB, full generated face crop vs ground-truth crop at the same size, RGB 0..255 "
            "(data_range 255), mean of per-frame PSNR (so a clip with any frame identical to its ground "
            "truth is inf)",
    "SSIM": "same crops and range, 11x11 Gaussian window sigma 1.5, K 0.01/0.03 (torchmetrics' "
            "definition, computed in float64), mean over frames; 1 for identical frames",
    "LMD": "mean Euclidean distance of the 40 face-mesh lip landmarks, divided by the crop side "
           "(x256 = pixels at 256x256); frames where the mesh fails on either side skipped (LMD-skipped)",
    "LipJitter": "mean Euclidean norm of (generated - real) per-frame velocity of the 40 face-mesh lip "
                 "landmarks, divided by the crop side, over consecutive frame pairs meshed on both sides "
                 "(LipJitter-pairs); 0 for a real clip against itself",
    "LSE-C/LSE-D": "official syncnet_v2 confidence (median-min) and min mean distance over audio "
                   "offsets -vshift..vshift (vshift 15), on 224x224 crops cut from the full generated "
                   "frames with syncnet_python's geometry (face box median-filtered over 13 frames, "
                   "40% context) when the frames are available (the scorer on videos), otherwise on "
                   "the generated face crops resized to 224",
    "SyncScore-C/SyncScore-D": "the LSE procedure with the project's own lip-sync expert "
                               "(lower halves at 128, HyperLips mel chunks, Euclidean distance of "
                               "L2-normalised embeddings); not comparable with published LSE",
    "-offset/-D@0/-C@0": "best audio offset in frames (official sign), and distance/confidence at "
                         "offset 0, which grow worse when the audio is out of sync",
    "FID": "Frechet distance of InceptionV3 pool3 features, all generated vs all real frames; below "
           "2048 frames (FID-frames) it is biased upwards: compare FIDs over equal frame counts only",
}


@dataclass
class EvalSample:
    """One clip to score: generated and real uint8 BGR frames (n,H,W,3) and 16 kHz mono audio.

    `sync_crops`, when the loader has the full frames and face boxes, holds the generated frames
    cut with the syncnet_python geometry (`syncnet_v2.syncnet_crops`, 224x224) for LSE; without it
    LSE resizes the face crops. `cache` holds per-clip work shared by metrics (lip landmarks)."""
    name: str
    generated: np.ndarray
    real: np.ndarray
    wav: np.ndarray = None
    fps: float = 25.0
    sync_crops: np.ndarray = None
    cache: dict = field(default_factory=dict, repr=False)


class Metric:
    """Base class: `compute(sample) -> {key: value}` per clip, `finish() -> {key: value}` for
    dataset-level values. A metric that cannot run sets `skip_reason` (one line) in __init__."""

    name = None
    count_keys = ()    # per-clip counts that are summed, not averaged, over clips

    def __init__(self, config):
        self.config = config
        self.device = resolve_device(config["device"])
        self.batch_size = int(config["metric_batch_size"])
        self.skip_reason = None

    def skip(self, reason):
        self.skip_reason = reason      # build_metrics logs it, as one line

    def weights_file(self, key, missing):
        """The weights file at config[key], or None after skip(missing.format(path=...))."""
        path = self.config[key]
        if path and os.path.isfile(path):
            return path
        self.skip(missing.format(path=path))
        return None

    def compute(self, sample):
        raise NotImplementedError

    def finish(self):
        return {}

    def clip_state(self):
        """What finish() keeps of the clip just computed (picklable; None: nothing), so a process
        can finish over clips that other processes computed (restore)."""
        return None

    def restore(self, states):
        """Make finish() use these clip_state() values, one per clip in clip order, instead of
        what this process computed."""

    def summarize(self, per_clip):
        """Mean over clips of every per-clip value (None values left out, inf kept)."""
        keys = [k for values in per_clip for k in values]
        summary = {}
        for key in dict.fromkeys(keys):
            values = [v[key] for v in per_clip if v.get(key) is not None]
            if not values:
                summary[key] = None
            elif key in self.count_keys:
                summary[key] = int(sum(values))
            else:
                summary[key] = float(np.mean(values))
        return summary


@METRICS.register("PSNR")
class PSNR(Metric):
    """torchmetrics PSNR per frame (data_range 255, float64), mean over the clip's frames."""

    name = "PSNR"

    def compute(self, sample):
        # lazy: torchmetrics takes ~2 s to import and only PSNR needs it (the trainer and the
        # scorer import this module whatever metrics they run)
        from torchmetrics.functional.image import peak_signal_noise_ratio
        values = []
        for start in range(0, len(sample.generated), self.batch_size):
            # RGB order for the record; PSNR treats the channels alike.
            gen, real = (torch.from_numpy(np.ascontiguousarray(x[start:start + self.batch_size, ..., ::-1]))
                         .to(self.device).permute(0, 3, 1, 2).double() for x in (sample.generated, sample.real))
            values.append(peak_signal_noise_ratio(gen, real, data_range=255.0, reduction="none",
                                                  dim=(1, 2, 3)).cpu())
        return {self.name: float(torch.cat(values).mean())}


GAUSSIAN_SIZE, GAUSSIAN_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def ssim_frames(generated_bgr, real_bgr, data_range=255.0):
    """Per-frame SSIM, float64: torchmetrics' structural_similarity_index_measure (Gaussian 11x11,
    sigma 1.5, reflect padding, mean of the whole SSIM map over pixels and channels) computed
    with OpenCV in float64. torchmetrics itself runs in float32 on the CPU 10x slower and gives
    0.9999991 for identical real frames; float64 makes identical frames exactly 1."""
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    kernel = cv2.getGaussianKernel(GAUSSIAN_SIZE, GAUSSIAN_SIGMA, cv2.CV_64F)

    def blur(image):
        return cv2.sepFilter2D(image, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)

    values = np.empty(len(generated_bgr))
    for k, (x, y) in enumerate(zip(generated_bgr, real_bgr)):
        x, y = x.astype(np.float64), y.astype(np.float64)
        mu_x, mu_y = blur(x), blur(y)
        var_x, var_y, cov = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2, blur(x * y) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        values[k] = ssim_map.mean()
    return values


@METRICS.register("SSIM")
class SSIM(Metric):
    name = "SSIM"

    def compute(self, sample):
        return {self.name: float(ssim_frames(sample.generated, sample.real).mean())}


def lip_landmark_indices():
    # lazy: mediapipe takes ~1 s to import and only LMD and LipJitter need it (utils.face loads it
    # the same way, when a face mesh is first made)
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS
    return np.array(sorted({i for edge in FACEMESH_LIPS for i in edge}))


def lip_landmark_distance(lips_a, lips_b, crop_side):
    """Mean distance between corresponding lip landmarks (P,2), as a fraction of the crop side."""
    return float(np.linalg.norm(lips_a - lips_b, axis=1).mean() / crop_side)


class _LipMetric(Metric):
    """Metrics over the lip landmarks of both sides of a sample, meshed once per sample."""

    def __init__(self, config):
        super().__init__(config)
        self.indices = lip_landmark_indices()
        self._mesh = None

    def lip_landmarks(self, sample):
        """(generated, real): lists of (40,2) lip landmarks per frame, None where the mesh missed."""
        if "lip_landmarks" not in sample.cache:
            if self._mesh is None:
                self._mesh = FaceMesh(static_image_mode=True)   # per frame: tracking would hide jitter

            def lips(frames):
                found = [self._mesh.landmarks(frame) for frame in frames]
                return [None if points is None else points[self.indices] for points in found]

            sample.cache["lip_landmarks"] = (lips(sample.generated), lips(sample.real))
        return sample.cache["lip_landmarks"]

    def finish(self):
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
        return {}


@METRICS.register("LMD")
class LMD(_LipMetric):
    name = "LMD"
    count_keys = ("LMD-frames", "LMD-skipped")

    def compute(self, sample):
        side = sample.generated.shape[1]
        generated, real = self.lip_landmarks(sample)
        distances = [lip_landmark_distance(a, b, side) for a, b in zip(generated, real)
                     if a is not None and b is not None]
        skipped = len(generated) - len(distances)
        if skipped:
            logger.info("LMD: face mesh missed %d of %d frame pairs of %s (skipped)", skipped,
                        len(generated), sample.name)
        return {"LMD": float(np.mean(distances)) if distances else None,
                "LMD-frames": len(distances), "LMD-skipped": skipped}


def lip_velocity_difference(generated, real, crop_side):
    """Per consecutive frame pair t, t+1 meshed on both sides: the mean over lip points of
    |(g[t+1] - g[t]) - (r[t+1] - r[t])| / crop_side. Lists of (P,2) arrays or None."""
    values = []
    for t in range(len(generated) - 1):
        pair = (generated[t], generated[t + 1], real[t], real[t + 1])
        if any(points is None for points in pair):
            continue
        g0, g1, r0, r1 = pair
        values.append(float(np.linalg.norm((g1 - g0) - (r1 - r0), axis=1).mean() / crop_side))
    return values


@METRICS.register("LipJitter")
class LipJitter(_LipMetric):
    name = "LipJitter"
    count_keys = ("LipJitter-pairs",)

    def compute(self, sample):
        generated, real = self.lip_landmarks(sample)
        values = lip_velocity_difference(generated, real, sample.generated.shape[1])
        return {"LipJitter": float(np.mean(values)) if values else None, "LipJitter-pairs": len(values)}


class _SyncMetric(Metric):
    """Shared by LSE and SyncScore: window embeddings -> offset search (av_sync.sync_scores)."""

    zero_pad = True

    def __init__(self, config):
        super().__init__(config)
        self.vshift = int(config["sync_vshift"])
        self.net = None

    def embeddings(self, frames, wav):
        raise NotImplementedError

    def compute(self, sample):
        try:
            if sample.wav is None:
                raise ValueError("no audio")
            video_emb, audio_emb = self.embeddings(sample.generated, sample.wav)
        except ValueError as exc:     # too short or silent: no value for this clip, not a crash
            logger.info("%s: no value for %s (%s)", self.name, sample.name, exc)
            return {f"{self.name}-{key}": None for key in ("C", "D", "offset", "D@0", "C@0")}
        return av_sync.sync_scores(video_emb, audio_emb, self.vshift, zero_pad=self.zero_pad).as_dict(self.name)


@METRICS.register("LSE")
class LSE(_SyncMetric):
    """LSE-C / LSE-D with the official syncnet_v2 weights at config["syncnet_v2_path"]."""

    name = "LSE"

    def __init__(self, config):
        super().__init__(config)
        path = self.weights_file("syncnet_v2_path", "official SyncNet weights not found at {path}: put "
                                 "syncnet_v2.model (from joonson/syncnet_python) there or set syncnet_v2_path")
        if path is None:
            return
        self.net = syncnet_v2.load_syncnet_v2(path, self.device)

    def compute(self, sample):
        if sample.sync_crops is not None:     # cut from the full frames as syncnet_python does
            sample = replace(sample, generated=sample.sync_crops)
        return super().compute(sample)

    def embeddings(self, frames, wav):
        return syncnet_v2.syncnet_v2_embeddings(self.net, frames, wav, self.device, self.batch_size)


@METRICS.register("SyncScore")
class SyncScore(_SyncMetric):
    """LSE's procedure with the project's own expert (model/expert_windows.py); offsets that pair
    fewer than half of the windows are left out instead of being compared with zero embeddings (zero_pad=False)."""

    name = "SyncScore"
    zero_pad = False

    def __init__(self, config, network=None):
        super().__init__(config)
        self.hflip = bool(config["syncnet_hflip"])   # look at faces the way the expert was trained
        if network is not None:     # an already loaded expert (tests, scripts)
            self.net = network.to(self.device).eval()
            return
        if not config["sync_expert_path"] and not config.get("dataset"):  # the standalone scorer
            self.skip("no lip-sync expert given: pass --sync_expert PATH (a SyncNet checkpoint)")
            return
        try:
            path = stage_checkpoint(config, "SyncNet", config["sync_expert_path"], "sync_expert_path")
        except CheckpointError as exc:
            self.skip(str(exc))
            return
        logger.info("SyncScore uses the lip-sync expert %s", path)
        self.net = load("SyncNet", path).network.to(self.device)

    def embeddings(self, frames, wav):
        return expert_windows.expert_embeddings(self.net, frames, wav, self.device, self.batch_size, self.hflip)


@METRICS.register("FID")
class FID(Metric):
    """FID over all evaluated frames, with InceptionV3 weights at config["inception_path"]."""

    name = "FID"

    def __init__(self, config):
        super().__init__(config)
        self.net = None
        self.generated, self.real = [], []
        path = self.weights_file("inception_path", "InceptionV3 weights not found at {path}: put pytorch-fid's "
                                 "pt_inception-2015-12-05-6726825d.pth (or a TorchScript extractor) there or "
                                 "set inception_path")
        if path is None:
            return
        self.net = inception.load_fid_inception(path, self.device)

    def compute(self, sample):
        self.generated.append(inception.inception_features(self.net, sample.generated, self.device, self.batch_size))
        self.real.append(inception.inception_features(self.net, sample.real, self.device, self.batch_size))
        return {}

    def clip_state(self):
        return self.generated[-1], self.real[-1]

    def restore(self, states):
        self.generated = [generated for generated, _ in states]
        self.real = [real for _, real in states]

    def finish(self):
        if not self.generated:
            return {}
        gen, real = np.concatenate(self.generated), np.concatenate(self.real)
        if len(gen) < 2:
            return {"FID": None, "FID-frames": len(gen)}
        return {"FID": inception.frechet_distance(gen, real), "FID-frames": len(gen)}


def build_metrics(config, names):
    """Instantiate the named metrics. When LSE is asked for but its weights are missing, SyncScore
    is added (if not asked for already) so a sync number is still reported, under its own name."""
    metrics, skipped = [], {}
    names = list(dict.fromkeys(names))
    for name in names:      # names may grow while iterating: the fallback is built by this loop
        metric = METRICS.get(name)(config)
        if metric.skip_reason:
            skipped[name] = metric.skip_reason
            fallback = ""
            if name == "LSE" and "SyncScore" not in names:
                names.append("SyncScore")
                fallback = "; SyncScore (the project's own lip-sync expert) is reported instead"
            logger.warning("%s is off: %s%s", name, metric.skip_reason, fallback)
            continue
        metrics.append(metric)
    return metrics, skipped
