"""Raw videos -> the preprocessed Base layout (face crops at 25 fps, audio, mel, boxes, filelists).

For every video under config["data_root"] (any depth, any common container, any fps and size):
frames are resampled to 25 fps, the face is followed by the toolkit's one face tracker (FaceTracker in
utils/tracking.py, the class inference and evaluation use too: the same boxes, bit for bit), and each
frame's crop is resized to config["crop_size"] and written as JPEG once the tracker's box for it is
final. Frames without a face never leave an index gap: a clip is
trimmed to its longest face-bearing run (or skipped when that run is too short to hold a training
sample). Audio is cut to the kept frames, saved as 16 kHz mono wav, and its mel spectrogram is
computed once, in the parent process. Every clip is written in
a temporary folder and renamed when complete, with `.done` inside, so an interrupted run resumes
where it stopped; videos run in parallel worker processes (spawned, one face detector each). Bad inputs are skipped and reported in
report.json with the reason; train/val/test filelists are split by video, reproducibly, or follow
the dataset's published split files (config["split_files"]: clips listed but missing or skipped are
named in report.json, and editing a list rewrites the filelists only).

A video without an audio track takes its speech from a same-named audio file beside it
(clip01.mp4 + clip01.wav, .m4a, .mp3, .aac or .flac; utils.audio.audio_source_for). Under torchrun
the videos are dealt among the ranks, each running its share on its share of its machine's cores,
and rank 0 writes report, filelists and manifest once every share is done.

report.json also holds each clip's data-report columns (face size, sharpness, static and silence
fractions, computed from the crops and audio in hand) and flags, and the totals under "summary";
report.png draws them (data_report.py). data_filter leaves flagged clips out of the filelists.
Each clip's audio-video offset is detected (and with av_offset=fix removed) once its folder is done
(av_offset.py); a change of those settings redoes only the offsets.
"""
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import cv2
import numpy as np
import soundfile as sf
from tqdm import tqdm

from talkingface.data.dataprocess import av_offset, data_report
from talkingface.data.dataprocess.demo import demo_is_current, ensure_demo_dataset
from talkingface.data.dataset.clip import DONE_MARKER, SPLITS, filelist_path
from talkingface.utils import distributed as dist_utils
from talkingface.utils.runtime import usable_cpus
from talkingface.utils.audio import (FPS, SAMPLE_RATE, SIDECAR_AUDIO_EXTENSIONS, audio_source_for, load_audio,
                                     melspectrogram, save_wav, sidecar_audio)
from talkingface.utils.errors import InputError, TalkingFaceError
from talkingface.utils.face import FaceDetector, crop_resize
from talkingface.utils.files import write_json_atomic, write_text_atomic
from talkingface.utils.registry import PREPROCESSORS
from talkingface.utils.tracking import FaceTracker, tracker_settings
from talkingface.utils.video import VIDEO_EXTENSIONS, iter_frames, probe_video

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 2
TMP_PREFIX = ".tmp-"


class SkipVideo(Exception):
    """A video that cannot give a clip; `code` is a short reason, the message the detail."""

    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code


def clip_id_for(rel_path):
    """The clip folder name of a video: its path under data_root with '/' -> '__', no extension."""
    return os.path.splitext(rel_path)[0].replace(os.sep, "__").replace("/", "__")


def find_videos(data_root, exclude=None):
    """Relative paths of every video file under `data_root` (any depth), sorted."""
    exclude = os.path.abspath(exclude) if exclude else None
    found = []
    for dirpath, dirnames, filenames in os.walk(data_root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.abspath(os.path.join(dirpath, d)) != exclude)
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append(os.path.relpath(os.path.join(dirpath, name), data_root))
    return sorted(found)


def _hash(data):
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _source_stamp(path):
    """What a clip is made from: the video's size and time, and its sidecar audio's when there is
    one (so adding, changing or removing that file redoes the clip)."""
    stat = os.stat(path)
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    sidecar = sidecar_audio(path)
    if sidecar is not None:
        audio_stat = os.stat(sidecar)
        stamp["sidecar"] = {"name": os.path.basename(sidecar), "size": audio_stat.st_size,
                            "mtime_ns": audio_stat.st_mtime_ns}
    return stamp


def split_clip_ids(clip_ids, val_ratio, test_ratio, seed):
    """Split clip ids into train/val/test without replacement, reproducibly.

    Each id gets a seeded hash; the lowest hashes go to val, the next to test. Adding a video
    therefore moves at most a boundary clip. With >= 2 clips, val gets at least one (when
    val_ratio > 0) and train always keeps at least one.
    """
    ordered = sorted(set(clip_ids), key=lambda c: hashlib.sha1(f"{seed}:{c}".encode()).hexdigest())
    n = len(ordered)
    n_val = int(round(n * val_ratio))
    n_test = int(round(n * test_ratio))
    if n >= 2 and val_ratio > 0:
        n_val = max(1, n_val)
    while n_val + n_test > max(0, n - 1):
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return {"val": sorted(ordered[:n_val]), "test": sorted(ordered[n_val:n_val + n_test]),
            "train": sorted(ordered[n_val + n_test:])}


# ----------------------------------------------------------------------------------------------
# Published splits: config["split_files"] names a list of clips per split instead of a draw

def split_file_paths(config):
    """{split: path} of config["split_files"] (relative to data_root or absolute); {} without."""
    return {split: os.path.join(config["data_root"], path) for split, path in (config["split_files"] or {}).items()}


def _split_file_bytes(split, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"cannot read the {split} split file {path} (split_files.{split}, relative to data_root "
                         f"or absolute): {exc.strerror or type(exc).__name__}") from None


def split_file_hashes(paths):
    """{split: sha256 of its file}: the filelists are made again when a list changes."""
    return {split: hashlib.sha256(_split_file_bytes(split, path)).hexdigest() for split, path in paths.items()}


def split_file_records(config):
    """{split: {"path", "sha256"}} of the dataset's split files (an evaluation's provenance); None
    when the split is drawn. A file gone since preprocessing gets sha256 null, not an error."""
    records = {}
    for split, path in split_file_paths(config).items():
        try:
            digest = split_file_hashes({split: path})[split]
        except InputError:
            digest = None
        records[split] = {"path": os.path.abspath(path), "sha256": digest}
    return records or None


def read_split_file(split, path):
    """The clip names a split file lists: the first word of each non-blank line (LRS2's test list
    adds a second, NF/MV), relative to data_root, with or without the video's extension."""
    try:
        text = _split_file_bytes(split, path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"the {split} split file {path} is not a UTF-8 text file of clip names") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def _name_key(name):
    """A listed name or a video's relative path, compared with '/' separators and no './'."""
    return os.path.normpath(name).replace(os.sep, "/")


def follow_split_files(lists, report):
    """(filelists {split: clip ids}, summary for report.json) from {split: listed names}.

    A name matches a video of `report` (entries by relative path) by its path, with or without
    the extension. Names of no video are "missing", of a skipped video "dropped" (with the reason);
    clips in no list are in no filelist ("unlisted"); a split without a file gets an empty list.
    """
    by_name = {}
    for rel, entry in sorted(report.items()):
        by_name[_name_key(rel)] = entry
        by_name.setdefault(os.path.splitext(_name_key(rel))[0], entry)
    splits, summary = {split: [] for split in SPLITS}, {}
    for split, names in lists.items():
        found, missing, dropped = set(), [], []
        for name in names:
            entry = by_name.get(_name_key(name))
            if entry is None:
                missing.append(name)
            elif entry["status"] != "ok":
                dropped.append({"clip": name, "reason": entry["reason"]})
            elif entry.get("filtered"):  # data_filter: flagged by the data report
                dropped.append({"clip": name, "reason": "data_filter: " + ", ".join(entry["flags"])})
            else:
                found.add(entry["clip_id"])
        splits[split] = sorted(found)
        summary[split] = {"listed": len(names), "found": len(found), "missing": missing, "dropped": dropped}
    listed = set().union(*splits.values())
    unlisted = sorted(e["clip_id"] for e in report.values()
                      if e["status"] == "ok" and not e.get("filtered") and e["clip_id"] not in listed)
    summary["unlisted"] = {"count": len(unlisted), "examples": unlisted[:5],
                           "note": "clips found in data_root but in no split file: in no filelist"}
    return splits, summary


def _log_split_files(summary, splits, paths):
    """A warning per split file with clips missing or dropped, or per two sharing clips; the
    count of clips in no list."""
    for split, path in paths.items():
        part = summary[split]
        if part["missing"] or part["dropped"]:
            examples = [*part["missing"][:1], *(f"{d['clip']} ({d['reason']})" for d in part["dropped"][:1])]
            logger.warning("%s split file %s: %d clips listed, %d found; %d missing from data_root, %d dropped by "
                           "preprocessing (e.g. %s; see report.json)", split, path, part["listed"], part["found"],
                           len(part["missing"]), len(part["dropped"]), ", ".join(examples))
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            both = set(splits[a]) & set(splits[b])
            if both:  # a published split should not: the scores would include training clips
                logger.warning("%d clips (e.g. %s) are in both the %s and the %s split files",
                               len(both), min(both), a, b)
    if summary["unlisted"]["count"]:
        logger.info("%d clips in data_root are in no split file and so in no filelist (e.g. %s)",
                    summary["unlisted"]["count"], summary["unlisted"]["examples"][0])


# ----------------------------------------------------------------------------------------------
# One video -> one clip folder (runs in a worker process)

_worker_detector = None


def _init_worker(detect_max_side):
    global _worker_detector
    cv2.setNumThreads(1)  # one worker per core: OpenCV's own threads would only contend
    # Each worker would repeat mediapipe's protobuf deprecation warning.
    warnings.filterwarnings("ignore", category=UserWarning, module="google.protobuf")
    _worker_detector = FaceDetector(max_side=detect_max_side)


def _pool_task(task):
    return process_video(task, _worker_detector)


def process_video(task, detector):
    """Frames, boxes, audio and meta of one video into task["tmp_dir"]; returns a report entry.

    Never raises for a bad input (the entry says why it was skipped). The clip is finished by
    `finalize_clip` (mel spectrogram, .done, rename), which runs in the parent process.
    """
    start = time.time()
    entry = {"video": task["rel"], "clip_id": task["clip_id"]}
    try:
        entry.update(_process_video(task, detector))
        entry["status"] = "ok"
    except SkipVideo as skip:
        entry.update(status="skipped", reason=skip.code, detail=str(skip))
    except InputError as exc:
        entry.update(status="skipped", reason="unreadable", detail=str(exc))
    except Exception as exc:  # a bug or an odd file: report it, keep the run going
        logger.exception("unexpected error while preprocessing %s", task["path"])
        entry.update(status="skipped", reason="error", detail=f"{type(exc).__name__}: {exc}")
    if entry["status"] != "ok":
        shutil.rmtree(task["tmp_dir"], ignore_errors=True)
    entry["seconds"] = round(time.time() - start, 3)
    return entry


def finalize_clip(task, entry):
    """mel.npy from the clip's audio.wav, then `.done`, then rename the folder into place."""
    if entry["status"] != "ok":
        return entry
    tmp_dir = task["tmp_dir"]
    try:
        wav, sr = sf.read(os.path.join(tmp_dir, "audio.wav"), dtype="float32")
        np.save(os.path.join(tmp_dir, "mel.npy"), melspectrogram(wav).astype(np.float32))
        with open(os.path.join(tmp_dir, DONE_MARKER), "w", encoding="utf-8") as f:
            f.write("ok\n")
        if os.path.exists(task["clip_dir"]):
            shutil.rmtree(task["clip_dir"])
        os.replace(tmp_dir, task["clip_dir"])
    except Exception as exc:
        logger.exception("could not finish clip %s", task["clip_id"])
        shutil.rmtree(tmp_dir, ignore_errors=True)
        entry = dict(entry, status="skipped", reason="error", detail=f"{type(exc).__name__}: {exc}")
    return entry


def _probe(path):
    if os.path.getsize(path) == 0:
        raise SkipVideo("empty_file", f"{path} is empty (0 bytes)")
    try:
        info = probe_video(path)
    except InputError as exc:
        code = "no_video_stream" if "No video stream" in str(exc) else "unreadable"
        raise SkipVideo(code, str(exc)) from None
    return info


class _CropWriter:
    """Holds each frame until the face tracker's box for it is final (a few frames later, see
    utils.tracking.FaceTracker), then writes its crop; frames without a face are dropped."""

    def __init__(self, task):
        self.task = task
        self.pending = deque()  # frames whose box is not out yet, oldest first
        self.boxes = {}  # frame index -> final crop box
        self.stats = data_report.CropStats()  # the data report's sharpness and static columns

    def add(self, frame, final):
        """`frame`, the next one, and the (index, box) pairs the tracker made final with it."""
        self.pending.append(frame)
        self.write(final)

    def write(self, final):
        for index, box in final:
            frame = self.pending.popleft()
            if not np.isfinite(box).all():
                continue
            self.boxes[index] = box
            crop = crop_resize(frame, box, self.task["crop_size"])
            self.stats.add(index, crop)
            path = os.path.join(self.task["tmp_dir"], f"{index}.jpg")
            if not cv2.imwrite(path, crop, [cv2.IMWRITE_JPEG_QUALITY, self.task["jpeg_quality"]]):
                raise OSError(f"cannot write {path}")


def _process_video(task, detector):
    path, fps, sr = task["path"], task["fps"], task["sample_rate"]
    info = _probe(path)
    notes = []
    audio_path = audio_source_for(path, has_audio=info.has_audio, log_level=None)  # the parent logs it
    if audio_path == path and not info.has_audio:
        raise SkipVideo("no_audio_stream", f"{path} has no audio stream and no same-named audio file beside it "
                                           f"({'/'.join(SIDECAR_AUDIO_EXTENSIONS)}): a training clip needs its speech")
    try:
        wav = load_audio(audio_path, sr=sr)
    except InputError as exc:
        raise SkipVideo("no_audio_stream", str(exc)) from None
    samples_per_frame = sr / fps
    audio_frames = int(len(wav) / samples_per_frame + 1e-6)  # frames the audio fully covers
    if audio_frames < task["min_clip_frames"]:
        raise SkipVideo("too_short", f"audio covers {audio_frames} frames at {fps:g} fps, "
                                     f"need >= {task['min_clip_frames']}")

    shutil.rmtree(task["tmp_dir"], ignore_errors=True)  # a leftover of a worker that died
    os.makedirs(task["tmp_dir"])
    tracker = FaceTracker.from_settings(task, info.width, info.height)
    crops = _CropWriter(task)
    n_decoded = 0
    frames = iter_frames(path, fps=fps)
    try:
        for index, frame in enumerate(frames):
            if index >= audio_frames:  # frames past the end of the audio have no speech to learn from
                notes.append(f"video longer than its audio: cut at {audio_frames} frames")
                break
            if index == 0 and frame.shape[:2] != (info.height, info.width):
                tracker.width, tracker.height = frame.shape[1], frame.shape[0]
            crops.add(frame, tracker.push(detector.detect(frame)))
            n_decoded = index + 1
    finally:
        if hasattr(frames, "close"):
            frames.close()  # releases the decoder now, not at garbage collection
    crops.write(tracker.finish())
    runs = tracker.runs
    if n_decoded == 0:
        raise SkipVideo("unreadable", f"no frame could be decoded from {path}")
    if not runs:
        raise SkipVideo("no_face", f"no face detected in any of {n_decoded} frames")
    first, stop = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    n_frames = stop - first
    if n_frames < task["min_clip_frames"]:
        raise SkipVideo("too_short", f"longest face-bearing run is {n_frames} frames "
                                     f"(of {n_decoded}), need >= {task['min_clip_frames']}")
    if n_frames < n_decoded:
        notes.append(f"trimmed to frames {first}..{stop - 1} of {n_decoded} "
                     f"({n_decoded - sum(b - a for a, b in runs)} frames without a face)")
    if tracker.frames_with_several:
        notes.append(f"several faces in {tracker.frames_with_several} frames: kept the largest/most central")

    # Renumber the kept run 0..n-1 and drop everything else: no index gaps.
    kept = set(range(first, stop))
    for name in os.listdir(task["tmp_dir"]):
        index = int(name.split(".")[0])
        if index not in kept:
            os.remove(os.path.join(task["tmp_dir"], name))
    if first:
        for index in range(first, stop):
            os.rename(os.path.join(task["tmp_dir"], f"{index}.jpg"),
                      os.path.join(task["tmp_dir"], f"{index - first}.jpg"))

    clip_wav = wav[int(round(first * samples_per_frame)):int(round(stop * samples_per_frame))]
    save_wav(os.path.join(task["tmp_dir"], "audio.wav"), clip_wav, sr)
    boxes = np.stack([crops.boxes[i] for i in range(first, stop)]).astype(np.float32)
    np.save(os.path.join(task["tmp_dir"], "boxes.npy"), boxes)
    meta = {"source": os.path.abspath(path), "source_rel": task["rel"], "fps": fps, "n_frames": n_frames,
            "width": tracker.width, "height": tracker.height, "first_frame": first,
            "source_fps": info.fps, "sample_rate": sr, "crop_size": task["crop_size"],
            "params_hash": task["params_hash"], "source_stamp": task["stamp"], "notes": notes}
    result = {"n_frames": n_frames, "first_frame": first, "notes": notes,
              "stats": dict(data_report.clip_stats(crops.stats, first, stop, boxes, clip_wav, sr),
                            source=_hash([task["params_hash"], task["stamp"]]))}
    if audio_path != path:
        meta["audio_source"] = os.path.abspath(audio_path)
        result["audio_source"] = os.path.basename(audio_path)
    with open(os.path.join(task["tmp_dir"], "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return result


# ----------------------------------------------------------------------------------------------

@PREPROCESSORS.register("HyperLipsBasePreprocessor")
class HyperLipsBasePreprocessor:
    """Keeps config["preprocessed_root"] in step with the videos under config["data_root"].

        pre = HyperLipsBasePreprocessor(config)
        if pre.is_stale():
            pre.run()
    """

    def __init__(self, config):
        self.config = config
        self.data_root = config["data_root"]
        self.root = config["preprocessed_root"]
        # Settings that change the content of a clip folder (a change redoes every clip).
        self.params = {"fps": FPS, "sample_rate": SAMPLE_RATE, "crop_size": config["crop_size"],
                       **tracker_settings(config), "min_clip_frames": config["min_clip_frames"],
                       "jpeg_quality": config["jpeg_quality"]}
        # Settings that only change the filelists.
        self.split_params = {"val_ratio": config["val_ratio"], "test_ratio": config["test_ratio"],
                             "split_seed": config["split_seed"]}
        self.split_files = split_file_paths(config)  # {split: path}: follow these lists instead of a draw
        self.workers = int(config["num_preprocess_workers"]) or usable_cpus()
        self.generate_demo = bool(config["generate_demo"])
        # The values themselves are checked by config/schema.py; an unreadable split list is one line
        # on every rank, before any work.
        split_file_hashes(self.split_files)

    @property
    def manifest_path(self):
        return os.path.join(self.root, "manifest.json")

    def _demo_settings(self):
        return dict(num_clips=self.config["demo_num_clips"], seconds=self.config["demo_clip_seconds"],
                    size=self.config["demo_frame_size"])

    def ensure_raw_data(self):
        """Generate the embedded demo clips when this dataset asks for them."""
        if self.generate_demo:
            ensure_demo_dataset(self.data_root, **self._demo_settings())

    def current_manifest(self):
        videos = {rel: _source_stamp(os.path.join(self.data_root, rel))
                  for rel in find_videos(self.data_root, exclude=self.root)} if os.path.isdir(self.data_root) else {}
        return {"version": MANIFEST_VERSION, "params": self.params, "split": self._split_stamp(), "videos": videos,
                "av_offset": av_offset.settings_stamp(self.config)}  # a change redoes only the offsets

    def _split_stamp(self):
        """What the filelists are made from: the split files' contents, or the draw's settings."""
        stamp = {"files": split_file_hashes(self.split_files)} if self.split_files else self.split_params
        if self.config["data_filter"]:  # the data report's flags drop clips: its thresholds shape the filelists
            stamp = dict(stamp, data_filter=data_report.thresholds(self.config))
        return stamp

    def is_stale(self):
        """True when the preprocessed data is missing, incomplete or made from other videos/settings."""
        if self.generate_demo:
            if not demo_is_current(self.data_root, **self._demo_settings()):
                return True
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return True
        if saved.get("manifest") != self.current_manifest():
            return True
        for split in SPLITS:
            path = filelist_path(self.root, split)
            if not os.path.isfile(path):
                return True
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip() and not os.path.isfile(os.path.join(self.root, line.strip(), DONE_MARKER)):
                        return True
        return False

    def _clip_is_current(self, clip_dir, stamp, params_hash):
        if not os.path.isfile(os.path.join(clip_dir, DONE_MARKER)):
            return None
        try:
            with open(os.path.join(clip_dir, "meta.json"), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if meta.get("params_hash") != params_hash or meta.get("source_stamp") != stamp:
            return None
        return meta

    def run(self):
        """Preprocess every new or changed video, then write report, filelists and manifest.

        Under torchrun every rank calls it: rank 0 prepares the folder and the list of videos to
        do, each rank does its share of them, and rank 0 writes the outputs once every share is
        done (preprocessed_root must be a folder all ranks see, e.g. on a shared filesystem).
        """
        group = dist_utils.patient_group()  # shares differ in length: a rank may wait long for the others
        manifest, report, tasks = run_on_main_process(self._plan, group)
        rank, world = dist_utils.rank(), dist_utils.world_size()
        # Big files first, dealt round-robin: the ranks' shares end at about the same time.
        share = sorted(tasks, key=lambda t: -t["stamp"]["size"])[rank::world]
        n_reused = len(report) - sum(e["status"] != "ok" for e in report.values())
        logger.info("preprocessing %d videos from %s into %s (%d already done, %s%d workers)",
                    len(tasks), self.data_root, self.root, n_reused,
                    f"{world} ranks x " if world > 1 else "", min(self.workers, max(1, len(share))))
        main = dist_utils.is_main_process()
        done = {}
        for entry in self._process_all(share):
            done[entry["video"]] = entry
            if main:
                _log_entry(entry)
        for source_rank, part in enumerate(dist_utils.all_gather_object(done, group)):
            report.update(part)
            if main and source_rank:  # rank 0 logs every rank's skips and notes
                for entry in part.values():
                    _log_entry(entry)
        run_on_main_process(lambda: self._write_outputs(report, manifest), group)
        return report

    def _plan(self):
        """(manifest, report entries of the clips already done, tasks of the others)."""
        self.ensure_raw_data()
        if not os.path.isdir(self.data_root):
            raise InputError(f"data_root {self.data_root} does not exist: put the raw videos there")
        os.makedirs(self.root, exist_ok=True)
        manifest = self.current_manifest()
        if not manifest["videos"]:
            raise InputError(f"no video files under {self.data_root}: put the raw videos there "
                             f"(extensions {', '.join(sorted(VIDEO_EXTENSIONS))})")
        for name in os.listdir(self.root):  # leftovers of an interrupted run
            if name.startswith(TMP_PREFIX):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        params_hash = _hash(self.params)
        report, tasks, seen = {}, [], {}
        previous = data_report.read_entries(os.path.join(self.root, "report.json"))
        for rel, stamp in manifest["videos"].items():
            clip_id = clip_id_for(rel)
            if clip_id in seen:
                report[rel] = {"video": rel, "clip_id": clip_id, "status": "skipped", "reason": "duplicate_clip_id",
                               "detail": f"same clip id as {seen[clip_id]}: rename one of them"}
                continue
            seen[clip_id] = rel
            clip_dir = os.path.join(self.root, clip_id)
            meta = self._clip_is_current(clip_dir, stamp, params_hash)
            if meta is not None:
                report[rel] = {"video": rel, "clip_id": clip_id, "status": "ok", "n_frames": meta["n_frames"],
                               "first_frame": meta["first_frame"], "notes": meta.get("notes", []), "reused": True}
                if meta.get("audio_source"):
                    report[rel]["audio_source"] = os.path.basename(meta["audio_source"])
                source = _hash([params_hash, stamp])
                report[rel]["stats"] = self._reused_stats(previous.get(rel), clip_dir, meta, source)
                continue
            if os.path.isdir(clip_dir):  # incomplete or out of date: redo from scratch
                shutil.rmtree(clip_dir)
            tasks.append(dict(self.params, path=os.path.join(self.data_root, rel), rel=rel, clip_id=clip_id,
                              clip_dir=clip_dir, tmp_dir=os.path.join(self.root, TMP_PREFIX + clip_id),
                              stamp=stamp, params_hash=params_hash))
        return manifest, report, tasks

    @staticmethod
    def _reused_stats(old, clip_dir, meta, source):
        """A reused clip's report columns: the last report's, else read back from its folder."""
        stats = (old or {}).get("stats")
        if stats and stats.get("source") == source:
            return stats
        stats = data_report.stats_from_clip_folder(clip_dir, meta["n_frames"])
        return dict(stats, source=source) if stats else None

    def _process_all(self, tasks):
        """Yield the report entry of every task, from worker processes when there are several."""
        workers = min(self.workers, len(tasks))
        bar = tqdm(total=len(tasks), desc="preprocess", unit="video", disable=not dist_utils.is_main_process())
        remaining = {task["clip_id"]: task for task in tasks}
        try:
            if workers > 1:
                try:
                    for entry in self._pool_results(tasks, workers):
                        task = remaining.pop(entry["clip_id"])
                        bar.update()
                        yield finalize_clip(task, entry)
                except BrokenProcessPool:
                    logger.warning("preprocessing workers could not start or died; doing the remaining %d "
                                   "videos in this process", len(remaining))
            if remaining:
                detector = FaceDetector(max_side=self.params["detect_max_side"])
                try:
                    for task in list(remaining.values()):
                        entry = finalize_clip(task, process_video(task, detector))
                        bar.update()
                        yield entry
                finally:
                    detector.close()
        finally:
            bar.close()

    def _pool_results(self, tasks, workers):
        # spawn: fresh interpreters, safe whatever threads (mediapipe, torch) the parent runs;
        # fork could deadlock on a lock held by such a thread.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(self.params["detect_max_side"],)) as pool:
            futures = [pool.submit(_pool_task, task) for task in tasks]
            for future in as_completed(futures):
                yield future.result()

    def _write_outputs(self, report, manifest):
        ok = sorted(e["clip_id"] for e in report.values() if e["status"] == "ok")
        unseen = ok
        for wait in (0, 1, 2, 4, 8, 16, 32):  # a network filesystem may show another machine's files late
            time.sleep(wait)
            unseen = [c for c in unseen if not os.path.isfile(os.path.join(self.root, c, DONE_MARKER))]
            if not unseen:
                break
        if unseen:  # made by another rank in a folder this one does not see
            raise InputError(f"{len(unseen)} finished clips (e.g. {unseen[0]}) are missing from {self.root}: "
                             "with several machines, preprocessed_root must be on a filesystem they all share")
        offsets = av_offset.update_clips(report, self.root, self.config)  # columns before the flags read them
        limits, drop = data_report.thresholds(self.config), bool(self.config["data_filter"])
        kept = data_report.apply_flags(report, limits, drop)  # == ok unless data_filter drops flagged clips
        splits, listed = self._splits(report, kept)
        summary = dict(data_report.summarize(report, self.params["fps"], limits, drop), av_offset=offsets)
        write_json_atomic(os.path.join(self.root, "report.json"),
                          {**dict(sorted(report.items())), **({"split_files": listed} if listed else {}),
                           "summary": summary}, indent=1)
        data_report.log_summary(summary)
        try:
            data_report.write_histograms(report, self.root, limits)
        except Exception as exc:  # a picture never fails the preprocessing
            logger.warning("could not draw the data report's histograms: %s: %s", type(exc).__name__, exc)
        sidecars = sorted(e["video"] for e in report.values() if e["status"] == "ok" and e.get("audio_source"))
        for video in sidecars:
            logger.debug("%s: audio from %s beside it", video, report[video]["audio_source"])
        if sidecars:
            logger.info("%d videos without an audio track took their audio from a same-named file beside them "
                        "(e.g. %s + %s)", len(sidecars), sidecars[0], report[sidecars[0]]["audio_source"])
        if not ok:
            raise InputError(f"no usable clip in {self.data_root}: every video was skipped "
                             f"(reasons in {os.path.join(self.root, 'report.json')})")
        if not kept:
            raise InputError(f"data_filter left no clip of {self.data_root}: every usable clip was flagged "
                             f"(reasons in {os.path.join(self.root, 'report.json')}; set data_filter=false "
                             "or loosen the data_* thresholds)")
        os.makedirs(os.path.join(self.root, "filelists"), exist_ok=True)
        for split, clip_ids in splits.items():
            write_text_atomic(filelist_path(self.root, split), "".join(f"{c}\n" for c in clip_ids))
        skipped = len(report) - len(ok)
        logger.info("preprocessed data ready in %s: %d clips (train %d, val %d, test %d), %d files skipped%s",
                    self.root, len(ok), len(splits["train"]), len(splits["val"]), len(splits["test"]), skipped,
                    " (see report.json)" if skipped else "")
        # Written last: its presence says the whole preprocessing finished.
        write_json_atomic(self.manifest_path, {"manifest": manifest}, indent=1)

    def _splits(self, report, ok):
        """(filelists, the split files' summary for report.json or None): the split files' lists
        when the dataset names them, else the seeded draw over the usable clips `ok`."""
        if not self.split_files:
            return split_clip_ids(ok, self.split_params["val_ratio"], self.split_params["test_ratio"],
                                  self.split_params["split_seed"]), None
        lists = {split: read_split_file(split, path) for split, path in self.split_files.items()}
        splits, summary = follow_split_files(lists, report)
        for split, path in self.split_files.items():
            summary[split] = {"path": os.path.abspath(path), **summary[split]}
        _log_split_files(summary, splits, self.split_files)
        return splits, summary


def _log_entry(entry):
    if entry["status"] != "ok":
        logger.warning("skipped %s: %s (%s)", entry["video"], entry["reason"], entry["detail"])
    for note in entry.get("notes", []):
        logger.info("%s: %s", entry["video"], note)


def run_on_main_process(work, group):
    """work() on rank 0, its result on every rank; a TalkingFaceError there is raised on every rank
    (the others would otherwise wait for rank 0 until the group's timeout)."""
    result = None
    if dist_utils.is_main_process():
        try:
            result = work()
        except TalkingFaceError as exc:
            result = exc
    result = dist_utils.broadcast_object(result, group)
    if isinstance(result, TalkingFaceError):
        raise result
    return result
