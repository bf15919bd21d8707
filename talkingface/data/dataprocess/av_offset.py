"""Audio-video offsets of the preprocessed clips: detected, recorded, and with av_offset=fix removed.

Every usable clip gets an offset in video frames with the sign of syncnet_python's "AV offset":
positive when the sound comes early (the audio that matches video frame i is the audio of frame
i - offset), negative when it comes late. The estimate follows syncnet_python's rule: the mean
distance between video and audio windows for every offset in -sync_vshift..sync_vshift, the offset
of the smallest (model/av_sync.py, the same arithmetic as LSE and SyncScore). The windows come from:

- syncnet_v2: the official SyncNet at syncnet_v2_path, fed the clip's face crops resized to 224
  (the LSE path for crops; syncnet_python cuts its own, a little wider, crops from the frames);
- SyncNet: the project's expert (sync_expert_path, else the newest in checkpoints/<dataset>/SyncNet/),
  used only when the validation accuracy its checkpoint records is at least EXPERT_MIN_ACCURACY;
- loudness: no weights: the darkness of the mouth region of the crops against the audio's loudness,
  frame by frame (distance = 1 - their correlation).

av_offset_method=auto takes syncnet_v2 when its file exists, else a SyncNet expert that passes the
accuracy bar, else nothing: the weight-free estimator did not find known shifts on the real sample
clips well enough to be trusted unasked (LOUDNESS_IS_DEFAULT), so the report says "no expert:
offsets not measured" and names the settings that enable them.

offset_confidence = (median - min) / median of the distance curve: syncnet_python's confidence
(median - min, kept in meta.json as sync_confidence) as a fraction of the typical distance, so
that one threshold serves every method whatever the scale of its distances (0: no dip at all, 1:
the best offset's distance is 0). av_offset=fix shifts a clip's audio.wav (and mel.npy) by its offset when the
confidence reaches av_offset_min_confidence; the untouched audio is kept as audio_original.wav, so
a later detection, a new threshold or av_offset=detect starts from the source's audio again.

meta.json's "av_offset" records the detection (its method, the expert's fingerprint, sync_vshift)
and the shift applied: a later run re-detects only clips whose record was made otherwise, and
rewrites the audio only of clips whose shift changes.
"""
import json
import logging
import os

import cv2
import numpy as np
import soundfile as sf
import torch

from talkingface.config.configurator import resolve_device
from talkingface.data.dataset.clip import DONE_MARKER
from talkingface.model import av_sync, expert_windows, load_network, syncnet_v2
from talkingface.utils.audio import SAMPLES_PER_FRAME, melspectrogram, save_wav
from talkingface.utils.checkpoint import load_checkpoint_file, stage_checkpoint
from talkingface.utils.errors import CheckpointError
from talkingface.utils.files import write_atomic, write_json_atomic
from talkingface.utils.fingerprint import checkpoint_fingerprint, file_sha256

logger = logging.getLogger(__name__)

METHODS = ("syncnet_v2", "SyncNet", "loudness")
ORIGINAL_AUDIO = "audio_original.wav"
# The SyncNet trainer calls 0.5 +- 0.02 chance (trainer/syncnet_trainer.py). An expert at 0.625
# (80 steps, batch 16, lr 5e-4 on a 3-clip demo set, 16 validation windows) found 3 of 9 known
# shifts, none confidently (`python benchmarks/offset_probe.py <the 3 demo clips> --method SyncNet
# --sync_expert_path <its checkpoint>`): an expert used for offsets must be far clear of chance.
# One at 0.875 (50 steps, batch 16, lr 5e-4 on an 8-clip demo set) found +5/-7 shifts exactly on a
# clip it trained on and on one it never saw, with a confidence of 0.23 to 0.29
# (`pytest -s tests/integration/test_own_expert_offsets.py`).
EXPERT_MIN_ACCURACY = 0.8
# The weight-free estimator must find a 6-frame shift within +-1 on 3 of the 4 real sample clips to
# be the default. It found it on 0 of 4 (3 of 4 relative to its own estimate on the unshifted clip):
# `python benchmarks/offset_probe.py video1.mp4 video2.mp4 video3.mp4 video4.mp4` (docs/own_data.md).
LOUDNESS_IS_DEFAULT = False
# Enough frames to place the minimum well; a long clip would otherwise hold all its crops in memory.
MAX_DETECT_FRAMES = 750
NO_EXPERT_NOTE = "no expert: offsets not measured"
ENABLE_HINT = ("set syncnet_v2_path to syncnet_v2.model, or train the SyncNet expert on this dataset and "
               "preprocess again (av_offset_method=auto picks either up), or set av_offset_method=loudness")


def offset_mode(config):
    """detect | fix | off (YAML and the command line read a bare off as false)."""
    mode = config["av_offset"]
    return "off" if mode is False or mode == "off" else mode


_ACCURACIES = {}  # checkpoint sha256 -> accuracy: each staleness check asks, the file is read once


def expert_accuracy(path):
    """The validation accuracy a SyncNet checkpoint of ours records, or None."""
    key = file_sha256(path)
    if key not in _ACCURACIES:
        validation = load_checkpoint_file(path).get("validation")
        accuracy = validation.get("accuracy") if isinstance(validation, dict) else None
        _ACCURACIES[key] = float(accuracy) if accuracy is not None else None
    return _ACCURACIES[key]


class OffsetDetector:
    """The method the settings choose (or None, with the reason) and its windows' estimate."""

    def __init__(self, config):
        self.config = config
        self.mode = offset_mode(config)
        self.vshift = int(config["sync_vshift"])
        self.min_confidence = float(config["av_offset_min_confidence"])
        self.method, self.source, self.reason = self._choose(config["av_offset_method"])
        self._net = None

    def _choose(self, requested):
        """(method or None, what it loads (a fingerprint) or None, why there is no method)."""
        config = self.config
        if self.mode == "off":
            return None, None, "av_offset=off"
        if requested in ("auto", "syncnet_v2"):
            path = config["syncnet_v2_path"]
            if path and os.path.isfile(path):
                return "syncnet_v2", checkpoint_fingerprint(path), None
            if requested == "syncnet_v2":
                raise CheckpointError(f"av_offset_method=syncnet_v2 but syncnet_v2_path {path} is not a file: put "
                                      "syncnet_v2.model (from syncnet_python) there or set syncnet_v2_path")
        if requested in ("auto", "SyncNet"):
            try:
                path = stage_checkpoint(config, "SyncNet", config["sync_expert_path"], "sync_expert_path")
            except CheckpointError:
                if requested == "SyncNet":
                    raise
                path = None
            if path is not None:
                accuracy = expert_accuracy(path)
                if accuracy is not None and accuracy >= EXPERT_MIN_ACCURACY:
                    return "SyncNet", dict(checkpoint_fingerprint(path), accuracy=accuracy), None
                why = (f"the SyncNet expert {path} records no validation accuracy" if accuracy is None else
                       f"the SyncNet expert {path} has a validation accuracy of {accuracy:.3f}, below "
                       f"{EXPERT_MIN_ACCURACY} (chance is 0.5)")
                if requested == "SyncNet":
                    raise CheckpointError(f"av_offset_method=SyncNet: {why}; train it longer or set sync_expert_path")
                _log_once(f"av_offset: {why}, so it does not measure offsets")
        if requested == "loudness" or (requested == "auto" and LOUDNESS_IS_DEFAULT):
            return "loudness", None, None
        return None, None, NO_EXPERT_NOTE

    @property
    def stamp(self):
        """What a detection depends on: a clip whose record has another stamp is detected again."""
        return {"method": self.method, "source": self.source, "vshift": self.vshift} if self.method else None

    def describe(self):
        """report.json's summary of the offsets: the method, or why there is none and how to get one."""
        if self.method is None:
            return {"mode": self.mode, "method": None, "note": self.reason,
                    **({"enable": ENABLE_HINT} if self.reason == NO_EXPERT_NOTE else {})}
        return {"mode": self.mode, "method": self.method, "source": self.source,
                "min_confidence": self.min_confidence, "vshift": self.vshift}

    # ------------------------------------------------------------------ estimates
    def _network(self):
        if self._net is None:
            device = resolve_device(self.config["device"])
            if self.method == "syncnet_v2":
                self._net = (syncnet_v2.load_syncnet_v2(self.source["path"], device), device)
            else:
                self._net = (load_network("SyncNet", self.source["path"]).to(device).eval(), device)
        return self._net

    def distances(self, frames, wav):
        """Mean window distance per offset: (2*vshift+1,), index k <-> audio window i + k - vshift."""
        if self.method == "loudness":
            return loudness_distances(frames, wav, self.vshift)
        net, device = self._network()
        batch = int(self.config["metric_batch_size"])
        if self.method == "syncnet_v2":
            video, audio = syncnet_v2.syncnet_v2_embeddings(net, frames, wav, device, batch)
            return av_sync.offset_distances(video, audio, self.vshift, zero_pad=True)   # syncnet_python's
        video, audio = expert_windows.expert_embeddings(net, frames, wav, device, batch,
                                                        hflip=bool(self.config["syncnet_hflip"]))
        return av_sync.offset_distances(video, audio, self.vshift, zero_pad=False)    # as SyncScore

    def estimate(self, frames, wav):
        """{"offset", "confidence", "sync_confidence"} of uint8 BGR face crops and their 16 kHz audio."""
        with torch.no_grad():
            return estimate_from_distances(self.distances(frames, wav), self.vshift)


def estimate_from_distances(means, vshift):
    """syncnet_python's offset (vshift - argmin) and confidence (median - min), and that confidence
    over the median (offset_confidence)."""
    means = np.asarray(means, np.float64)
    finite = np.isfinite(means)
    if finite.sum() < 4:   # a silent or frozen clip: nothing to correlate
        return {"offset": None, "confidence": None, "sync_confidence": None}
    best = int(np.nanargmin(means))
    median = float(np.median(means[finite]))
    margin = median - float(means[best])
    return {"offset": vshift - best, "confidence": round(margin / median, 3) if median > 1e-9 else 0.0,
            "sync_confidence": round(margin, 4)}


# ---------------------------------------------------------------------------------------------
# The weight-free estimator

# Mouth region of a face crop (pad below the chin included), as fractions of its side.
MOUTH_ROWS, MOUTH_COLS = (0.62, 0.92), (0.28, 0.72)
DETREND_FRAMES = 25   # a 1 s moving average is removed from both signals: lighting, head motion, level


def _detrended(signal, width=DETREND_FRAMES):
    signal = np.asarray(signal, np.float64)
    if len(signal) > width:
        kernel = np.ones(width) / width
        signal = signal - np.convolve(np.pad(signal, width // 2, mode="edge"), kernel, mode="valid")[:len(signal)]
    return signal


def mouth_darkness(frames):
    """Per frame, the mean darkness (255 - grey) of the mouth region of the face crop: an open mouth
    shows its dark inside."""
    values = []
    for frame in frames:
        h, w = frame.shape[:2]
        region = frame[int(MOUTH_ROWS[0] * h):int(MOUTH_ROWS[1] * h), int(MOUTH_COLS[0] * w):int(MOUTH_COLS[1] * w)]
        grey = cv2.cvtColor(region, cv2.COLOR_BGR2GRAY) if region.ndim == 3 else region
        values.append(255.0 - float(grey.mean()))
    return np.asarray(values)


LOUDNESS_FLOOR_DB = -60.0   # quieter is no speech: the silence a shift pads with must not outweigh the speech


def frame_loudness(wav, n_frames):
    """RMS level (dB, at least LOUDNESS_FLOOR_DB) of each video frame's 40 ms of audio."""
    wav = np.asarray(wav[:n_frames * SAMPLES_PER_FRAME], np.float64)
    frames = np.pad(wav, (0, n_frames * SAMPLES_PER_FRAME - len(wav))).reshape(n_frames, SAMPLES_PER_FRAME)
    return np.maximum(20.0 * np.log10(np.sqrt(np.mean(frames ** 2, axis=1)) + 1e-9), LOUDNESS_FLOOR_DB)


def loudness_distances(frames, wav, vshift):
    """1 - correlation of mouth darkness (video frame i) and loudness (audio frame i + k - vshift),
    both detrended; NaN where fewer than half of the frames pair."""
    n = min(len(frames), len(wav) // SAMPLES_PER_FRAME)
    mouth = _detrended(mouth_darkness(frames[:n]))
    loud = _detrended(frame_loudness(wav, n))
    means = np.full(2 * vshift + 1, np.nan)
    for k in range(2 * vshift + 1):
        lag = k - vshift
        video = mouth[max(0, -lag):n - max(0, lag)]
        audio = loud[max(0, lag):n - max(0, -lag)]
        if len(video) >= max(3, (n + 1) // 2) and video.std() > 1e-9 and audio.std() > 1e-9:
            means[k] = 1.0 - float(np.corrcoef(video, audio)[0, 1])
    return means


# ---------------------------------------------------------------------------------------------
# Clip folders

def read_crops(clip_dir, n_frames):
    frames = []
    for index in range(min(n_frames, MAX_DETECT_FRAMES)):
        crop = cv2.imread(os.path.join(clip_dir, f"{index}.jpg"), cv2.IMREAD_COLOR)
        if crop is None:
            break
        frames.append(crop)
    return frames


def _read_wav(path):
    wav, _ = sf.read(path, dtype="float32")
    return wav if wav.ndim == 1 else wav.mean(axis=1)


def _write_clip_audio(clip_dir, wav):
    """audio.wav and the mel.npy made from it, as preprocessing writes them."""
    save_wav(os.path.join(clip_dir, "audio.wav"), wav)
    mel = melspectrogram(wav).astype(np.float32)
    write_atomic(os.path.join(clip_dir, "mel.npy"), lambda f: np.save(f, mel), binary=True)


def apply_shift(clip_dir, shift):
    """Make the clip's audio.wav its original audio delayed by `shift` frames (advanced when < 0;
    0 restores it), with silence at the end it leaves open."""
    original = os.path.join(clip_dir, ORIGINAL_AUDIO)
    if not os.path.isfile(original):
        if not shift:
            return
        os.replace(os.path.join(clip_dir, "audio.wav"), original)
    wav = _read_wav(original)
    _write_clip_audio(clip_dir, av_sync.shift_audio(wav, shift) if shift else wav)
    if not shift:
        os.remove(original)


def update_clip(clip_dir, detector, meta):
    """Detect (unless meta holds a detection with the detector's stamp) and apply or undo the fix
    of one clip; returns its record, meta.json updated when it changed."""
    record = dict(meta.get("av_offset") or {})
    if detector.stamp is None:
        record = {"applied": record.get("applied", 0)}
    elif record.get("stamp") != detector.stamp:
        frames = read_crops(clip_dir, meta["n_frames"])
        original = os.path.join(clip_dir, ORIGINAL_AUDIO)
        wav = _read_wav(original if os.path.isfile(original) else os.path.join(clip_dir, "audio.wav"))
        record = {"stamp": detector.stamp, "method": detector.method, **detector.estimate(frames, wav),
                  "applied": record.get("applied", 0)}
    confident = record.get("confidence") is not None and record["confidence"] >= detector.min_confidence
    wanted = record["offset"] if detector.mode == "fix" and confident else 0
    if wanted != record["applied"]:
        apply_shift(clip_dir, wanted)
        record["applied"] = wanted
    if record != meta.get("av_offset"):
        write_json_atomic(os.path.join(clip_dir, "meta.json"), dict(meta, av_offset=record), indent=1)
    return record


def columns(record, min_confidence):
    """The report columns of a clip's record: offset, confidence, method, the shift applied and
    offset_left, the |offset| still in its audio (None when there is no confident estimate)."""
    offset, confidence = record.get("offset"), record.get("confidence")
    confident = confidence is not None and confidence >= min_confidence
    return {"offset": offset, "offset_confidence": confidence, "offset_method": record.get("method"),
            "offset_applied": record.get("applied", 0),
            "offset_left": abs(offset - record.get("applied", 0)) if confident else None}


def update_clips(report, root, config):
    """Offsets of every usable clip of `report` (entries get the columns in "stats"); returns the
    summary for report.json."""
    detector = OffsetDetector(config)
    if detector.method is None and detector.reason == NO_EXPERT_NOTE:
        logger.warning("%s (%s)", NO_EXPERT_NOTE, ENABLE_HINT)
    redone = 0
    for entry in report.values():
        if entry["status"] != "ok":
            continue
        clip_dir = os.path.join(root, entry["clip_id"])
        if not os.path.isfile(os.path.join(clip_dir, DONE_MARKER)):
            continue
        with open(os.path.join(clip_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        before = meta.get("av_offset")
        record = update_clip(clip_dir, detector, meta)
        redone += record != before
        entry["stats"] = dict(entry.get("stats") or {}, **columns(record, detector.min_confidence))
    if detector.method:
        logger.info("av_offset: %s offsets (%s), %d clips updated", detector.method, detector.mode, redone)
    return dict(detector.describe(), updated=redone)


_LOGGED = set()


def _log_once(message):
    """A run builds the detector for each staleness check: say why it measures nothing once."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        logger.info(message)


def settings_stamp(config):
    """What the offsets of a preprocessed dataset depend on (a change makes it stale)."""
    detector = OffsetDetector(config)
    return {"mode": detector.mode, "detection": detector.stamp, "min_confidence": detector.min_confidence}
