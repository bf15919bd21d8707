"""The data report of preprocessing: per-clip quality columns, flags, totals and histograms.

Each usable clip of report.json gets "stats", computed while the clip is made (crops and audio in
hand, nothing decoded twice):

- face_px, face_px_min: median and minimum side of the tracked face box in source-video pixels
  (a box's side: the mean of its width and height);
- sharpness: median over the clip's crops (crop_size px) of the variance of the Laplacian of the
  grayscale crop (cv2.Laplacian); low = blurred or upscaled from a small face;
- static: fraction of frames whose grayscale crop differs from the previous one by a mean absolute
  difference below STATIC_DIFF (on 0-255): a frozen or still-image video;
- silence: fraction of the clip's 40 ms audio frames (16 kHz, 640 samples) whose RMS lies below
  SILENCE_DBFS (relative to full scale 1.0);
- offset, offset_confidence, offset_method, offset_applied, offset_left: the clip's audio-video
  offset in frames (syncnet_python's sign: positive = sound early), how clearly it was found, by
  which method (None: not measured), the shift av_offset=fix applied to its audio, and the |offset|
  still in its audio when the estimate is confident (av_offset.py).

A clip is flagged when it breaches a data_* setting (small_face, blurry, static, silent, shifted); with
data_filter it is left out of the filelists (its folder stays). The totals go under the top-level
"summary" key of report.json: readers of the per-video entries skip keys whose value has no
"video" (as "split_files").
"""
import json
import logging
import os

import cv2
import numpy as np
import soundfile as sf

from talkingface.utils.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from talkingface.utils.files import write_atomic, write_text_atomic

logger = logging.getLogger(__name__)

STATIC_DIFF = 1.0  # mean absolute grayscale difference (0-255) below which a frame repeats the previous one
SILENCE_DBFS = -50.0  # RMS of a 40 ms audio frame below which it is silence (dB relative to full scale)

# column: (label, unit)
COLUMNS = {"face_px": ("face size (median)", "px"), "face_px_min": ("face size (min)", "px"),
           "sharpness": ("sharpness (Laplacian variance)", ""), "static": ("static fraction", ""),
           "silence": ("silence fraction", ""), "offset": ("audio-video offset", "frames"),
           "offset_confidence": ("offset confidence", "std devs"), "offset_left": ("offset left in the audio", "frames")}
# flag: (column, setting, breached when the value is ... the setting)
FLAGS = {"small_face": ("face_px", "data_min_face_px", "below"),
         "blurry": ("sharpness", "data_min_sharpness", "below"),
         "static": ("static", "data_max_static", "above"),
         "silent": ("silence", "data_max_silence", "above"),
         "shifted": ("offset_left", "data_max_offset", "above")}


class CropStats:
    """Sharpness and difference to the previous crop of every crop written, by frame index."""

    def __init__(self):
        self.sharpness, self.diff = {}, {}
        self._previous = None  # (index, grayscale crop)

    def add(self, index, crop):
        gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
        self.sharpness[index] = float(cv2.Laplacian(gray, cv2.CV_64F).var())
        if self._previous is not None and self._previous[0] == index - 1:
            self.diff[index] = float(np.mean(cv2.absdiff(gray, self._previous[1])))
        self._previous = (index, gray)


def silence_fraction(wav, sr=SAMPLE_RATE):
    """Fraction of the 40 ms frames (one video frame each) of `wav` (float, full scale 1.0) with RMS
    below SILENCE_DBFS."""
    hop = SAMPLES_PER_FRAME * sr // SAMPLE_RATE
    n = len(wav) // hop
    if n == 0:
        return 1.0
    frames = np.asarray(wav[:n * hop], np.float64).reshape(n, hop)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    return float(np.mean(20.0 * np.log10(rms + 1e-12) < SILENCE_DBFS))


def clip_stats(crops, first, stop, boxes, wav, sr=SAMPLE_RATE):
    """The report columns of the clip made of frames first..stop-1 (`crops`: a CropStats)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    sides = ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2
    sharp = [crops.sharpness[i] for i in range(first, stop) if i in crops.sharpness]
    pairs = [crops.diff[i] for i in range(first + 1, stop) if i in crops.diff]
    return {"face_px": round(float(np.median(sides)), 1), "face_px_min": round(float(np.min(sides)), 1),
            "sharpness": round(float(np.median(sharp)), 1) if sharp else 0.0,
            "static": round(sum(d < STATIC_DIFF for d in pairs) / len(pairs), 3) if pairs else 1.0,
            "silence": round(silence_fraction(wav, sr), 3)}


def stats_from_clip_folder(clip_dir, n_frames):
    """The columns of a finished clip read back from its folder (a clip made before the report
    had them); None when it cannot be read."""
    try:
        crops = CropStats()
        for index in range(n_frames):
            crop = cv2.imread(os.path.join(clip_dir, f"{index}.jpg"), cv2.IMREAD_GRAYSCALE)
            if crop is None:
                return None
            crops.add(index, crop)
        wav, sr = sf.read(os.path.join(clip_dir, "audio.wav"), dtype="float32")
        return clip_stats(crops, 0, n_frames, np.load(os.path.join(clip_dir, "boxes.npy")), wav, sr)
    except (OSError, ValueError):
        return None


def is_entry(value):
    """Whether a value of report.json is a per-video entry (not "summary" or "split_files")."""
    return isinstance(value, dict) and "video" in value


def read_entries(path):
    """{video: entry} of a report.json; {} when there is none or it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in report.items() if is_entry(value)} if isinstance(report, dict) else {}


def thresholds(config):
    """{setting: value} of the flags' thresholds in `config`."""
    # spelled out, not derived from FLAGS: tests/unit/config/test_config.py finds the keys the code reads by their literal reads
    return {"data_min_face_px": config["data_min_face_px"], "data_min_sharpness": config["data_min_sharpness"],
            "data_max_static": config["data_max_static"], "data_max_silence": config["data_max_silence"],
            "data_max_offset": config["data_max_offset"]}


def flags_for(stats, limits):
    """{flag: why} of the settings the clip's stats breach ({} without stats)."""
    flags = {}
    for flag, (column, setting, side) in FLAGS.items():
        value = (stats or {}).get(column)
        if value is None:
            continue
        if (value < limits[setting]) if side == "below" else (value > limits[setting]):
            sign = "<" if side == "below" else ">"
            flags[flag] = f"{COLUMNS[column][0]} {value:g} {sign} {setting} {limits[setting]:g}"
    return flags


def apply_flags(report, limits, drop):
    """Set "flags" on every usable entry; with `drop`, flagged ones get "filtered": true.
    Returns the clip ids left for the filelists."""
    kept = []
    for entry in report.values():
        if entry["status"] != "ok":
            continue
        entry["flags"] = flags_for(entry.get("stats"), limits)
        entry.pop("filtered", None)
        if drop and entry["flags"]:
            entry["filtered"] = True
        else:
            kept.append(entry["clip_id"])
    return sorted(kept)


def _speaker(video):
    parts = video.replace(os.sep, "/").split("/")
    return parts[0] if len(parts) > 1 else "."  # videos directly in data_root count as one speaker


def summarize(report, fps, limits, drop):
    """The totals of report.json's "summary": clips, minutes, speakers, flags, medians."""
    ok = [e for e in report.values() if e["status"] == "ok"]
    columns = {c: [e["stats"][c] for e in ok if e.get("stats") and e["stats"].get(c) is not None] for c in COLUMNS}
    flagged = {flag: sorted(e["video"] for e in ok if flag in e.get("flags", {})) for flag in FLAGS}
    return {"clips": len(ok), "minutes": round(sum(e["n_frames"] for e in ok) / fps / 60, 2),
            "speakers": len({_speaker(e["video"]) for e in ok}), "skipped": len(report) - len(ok),
            "medians": {c: (round(float(np.median(v)), 3) if v else None) for c, v in columns.items()},
            "flagged": {flag: len(videos) for flag, videos in flagged.items()},
            "flagged_clips": {flag: videos for flag, videos in flagged.items() if videos},
            "thresholds": dict(limits, static_diff=STATIC_DIFF, silence_dbfs=SILENCE_DBFS),
            "data_filter": bool(drop), "filtered": sorted(e["video"] for e in ok if e.get("filtered"))}


def log_summary(summary):
    """The summary as a small table of logger.info lines."""
    logger.info("data report: %d clips, %.2f minutes, %d speakers", summary["clips"], summary["minutes"],
                summary["speakers"])
    for column, (label, unit) in COLUMNS.items():
        value = summary["medians"][column]
        logger.info("  %-32s median %s", label, "n/a" if value is None else f"{value:g}{(' ' + unit) if unit else ''}")
    for flag, (column, setting, side) in FLAGS.items():
        logger.info("  flagged %-11s %4d  (%s %s %g)", flag, summary["flagged"][flag], COLUMNS[column][0], side,
                    summary["thresholds"][setting])
    if summary["filtered"]:
        logger.info("  data_filter left %d flagged clips out of the filelists (reasons in report.json)",
                    len(summary["filtered"]))


def write_histograms(report, root, limits):
    """report.png (matplotlib) with a histogram per column of the usable clips (dashed: the flag
    threshold); report.html with inline SVG bars when matplotlib is missing. Returns the path."""
    ok = [e["stats"] for e in report.values() if e["status"] == "ok" and e.get("stats")]
    columns = [c for c in COLUMNS if c not in ("face_px_min", "offset_left")]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _write_html(ok, columns, os.path.join(root, "report.html"))
    path = os.path.join(root, "report.png")
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.2))
    for ax, column in zip(axes, columns):
        fraction = column in ("static", "silence")
        values = [s[column] for s in ok if s.get(column) is not None]  # offsets: None when not measured
        ax.hist(values, bins=20, range=(0, 1) if fraction else None, color="#4a7ab8")
        if not values:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        for flag_column, setting, _ in FLAGS.values():
            if flag_column == column:
                ax.axvline(limits[setting], color="#c0392b", linestyle="--", linewidth=1)
        label, unit = COLUMNS[column]
        ax.set_title(label, fontsize=10)
        ax.set_xlabel(unit or "value")
    axes[0].set_ylabel("clips")
    fig.tight_layout()
    try:
        write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=80, metadata={"Software": None}), binary=True)
    finally:
        plt.close(fig)
    return path


def _write_html(stats, columns, path):
    parts = ["<!doctype html><meta charset='utf-8'><title>data report</title>"]
    for column in columns:
        values = np.asarray([s[column] for s in stats if s.get(column) is not None], np.float64)
        counts, edges = np.histogram(values, bins=20) if len(values) else (np.zeros(20, int), np.linspace(0, 1, 21))
        top = max(1, counts.max())
        bars = "".join(f"<rect x='{i * 15}' y='{100 - 100 * c / top:.1f}' width='14' height='{100 * c / top:.1f}' "
                       f"fill='#4a7ab8'/>" for i, c in enumerate(counts))
        parts.append(f"<h3>{COLUMNS[column][0]} ({edges[0]:g} .. {edges[-1]:g})</h3>"
                     f"<svg width='300' height='100'>{bars}</svg>")
    write_text_atomic(path, "\n".join(parts))
    return path
