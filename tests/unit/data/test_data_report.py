"""The data report of preprocessing: per-clip columns, totals, flags, data_filter, histograms."""
import json
import logging
import os
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from talkingface.config import Config
from talkingface.data.dataprocess import data_report
from talkingface.data.dataprocess.demo import ensure_demo_dataset
from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor, clip_id_for
from talkingface.data.dataset.clip import SPLITS, filelist_path
from talkingface.model.av_sync import shift_audio
from talkingface.utils.audio import load_audio, save_wav
from talkingface.utils.ffmpeg import ffmpeg_exe

IMAGE_COLUMNS = {"face_px", "face_px_min", "sharpness", "static", "silence"}
OFFSET_COLUMNS = {"offset", "offset_confidence", "offset_left"}   # numbers; offset_method and _applied besides
COLUMNS = IMAGE_COLUMNS | OFFSET_COLUMNS
SHIFT = 8   # frames the shifted clip's sound comes early
# One derived clip per flag: the flag it must get and nothing else.
KINDS = {"flagged/tiny.mp4": "small_face", "flagged/blurred.mp4": "blurry",
         "flagged/still.mp4": "static", "flagged/mute.mp4": "silent", "flagged/shifted.mp4": "shifted"}
# A small face is upscaled to crop_size: its crops are blurred too.
EXPECTED = {rel: ["small_face", "blurry"] if flag == "small_face" else [flag] for rel, flag in KINDS.items()}


def read_report(root):
    with open(os.path.join(root, "report.json"), encoding="utf-8") as f:
        return json.load(f)


def listed_clips(root):
    clips = set()
    for split in SPLITS:
        with open(filelist_path(root, split), encoding="utf-8") as f:
            clips.update(line.strip() for line in f if line.strip())
    return clips


def test_demo_report_has_columns_totals_and_picture(demo_base_data):
    root = demo_base_data["preprocessed_root"]
    report = read_report(root)
    entries = {k: v for k, v in report.items() if data_report.is_entry(v)}
    assert set(report) - set(entries) == {"summary"}
    assert len(entries) == 3
    for entry in entries.values():
        stats = entry["stats"]
        assert COLUMNS | {"offset_method", "offset_applied"} <= set(stats)
        assert stats["offset"] is None and stats["offset_method"] is None   # no expert here
        assert 100 < stats["face_px_min"] <= stats["face_px"] < 256  # the demo face is ~140 px
        assert stats["sharpness"] > 20 and 0 <= stats["static"] <= 0.5 and 0 <= stats["silence"] <= 0.6
        assert entry["flags"] == {} and "filtered" not in entry
    summary = report["summary"]
    assert (summary["clips"], summary["speakers"], summary["skipped"]) == (3, 1, 0)
    assert summary["minutes"] == pytest.approx(3 * 2.0 / 60, abs=0.01)
    assert set(summary["medians"]) == COLUMNS and all(summary["medians"][c] is not None for c in IMAGE_COLUMNS)
    assert summary["flagged"] == {"small_face": 0, "blurry": 0, "static": 0, "silent": 0, "shifted": 0}
    assert summary["av_offset"]["note"] == "no expert: offsets not measured"
    assert "av_offset_method" in summary["av_offset"]["enable"]
    assert summary["data_filter"] is False and summary["filtered"] == []
    assert summary["thresholds"]["static_diff"] == 1.0 and summary["thresholds"]["silence_dbfs"] == -50.0
    assert os.path.getsize(os.path.join(root, "report.png")) > 1000


def test_stats_read_back_from_a_clip_folder_match(demo_base_data):
    """A clip made before the report (no stats in the last report.json) gets them from its folder."""
    root = demo_base_data["preprocessed_root"]
    entry = next(v for v in read_report(root).values() if data_report.is_entry(v))
    again = data_report.stats_from_clip_folder(os.path.join(root, entry["clip_id"]), entry["n_frames"])
    made = entry["stats"]
    assert again["face_px"] == made["face_px"] and again["silence"] == made["silence"]
    assert again["sharpness"] == pytest.approx(made["sharpness"], rel=0.2)  # JPEG round trip
    assert again["static"] == pytest.approx(made["static"], abs=0.1)


def test_silence_fraction():
    tone = 0.1 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 200)
    assert data_report.silence_fraction(tone) == 0.0
    assert data_report.silence_fraction(np.zeros(16000)) == 1.0
    part = np.concatenate([tone[:6400], 1e-4 * tone[6400:]])  # 10 loud 40 ms frames, 15 at -80 dBFS
    assert data_report.silence_fraction(part) == 0.6


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def _make_flagged_clips(data_root, source, tmp):
    seconds = 1.2
    out = {rel: os.path.join(data_root, rel) for rel in KINDS}
    os.makedirs(os.path.dirname(out["flagged/tiny.mp4"]))
    encode = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    # A face of ~45 px: the demo frame shrunk to 80 px and padded back to 256.
    _ffmpeg("-i", source, "-vf", "scale=80:80,pad=256:256:88:88", *encode, out["flagged/tiny.mp4"])
    _ffmpeg("-i", source, "-vf", "boxblur=6:2", *encode, out["flagged/blurred.mp4"])
    still = os.path.join(tmp, "still.png")
    _ffmpeg("-i", source, "-frames:v", 1, still)
    _ffmpeg("-loop", 1, "-framerate", 25, "-i", still, "-i", source, "-map", "0:v", "-map", "1:a", "-t", seconds,
            *encode, out["flagged/still.mp4"])
    _ffmpeg("-i", source, "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-map", "0:v", "-map", "1:a",
            "-t", seconds, *encode, out["flagged/mute.mp4"])
    early = os.path.join(tmp, "early.wav")   # the sound SHIFT frames ahead of the picture
    save_wav(early, shift_audio(load_audio(source), -SHIFT))
    _ffmpeg("-i", source, "-i", early, "-map", "0:v", "-map", "1:a", *encode, out["flagged/shifted.mp4"])


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    """3 demo clips and one clip of each flagged kind, preprocessed without and then with data_filter;
    offsets by the weight-free estimator (the demo mouth follows the loudness exactly)."""
    tmp = tmp_path_factory.mktemp("data_report")
    data_root, root = str(tmp / "data"), str(tmp / "pre")
    demo = ensure_demo_dataset(data_root, num_clips=3, seconds=1.2)
    _make_flagged_clips(data_root, demo[0], str(tmp))

    def config(**values):
        return Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
            data_root=data_root, preprocessed_root=root, generate_demo=False, num_preprocess_workers=1,
            av_offset_method="loudness", **values))

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("talkingface")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        HyperLipsBasePreprocessor(config()).run()
        unfiltered = SimpleNamespace(report=read_report(root), listed=listed_clips(root), log=list(records))
        pre = HyperLipsBasePreprocessor(config(data_filter=True))
        stale = pre.is_stale()  # the filter's thresholds shape the filelists
        pre.run()
        filtered = SimpleNamespace(report=read_report(root), listed=listed_clips(root), stale=stale,
                                   fresh=not pre.is_stale())
        pre = HyperLipsBasePreprocessor(config(data_filter=True, av_offset="fix"))
        stale = pre.is_stale()  # the offsets' settings: only the offsets are redone
        pre.run()
        fixed = SimpleNamespace(report=read_report(root), listed=listed_clips(root), stale=stale,
                                fresh=not pre.is_stale())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(unfiltered=unfiltered, filtered=filtered, fixed=fixed, root=root,
                           demo=[os.path.relpath(p, data_root) for p in demo])


def test_each_kind_is_flagged_for_its_reason(flagged):
    report = flagged.unfiltered.report
    for rel, flag in KINDS.items():
        assert report[rel]["status"] == "ok", report[rel]
        assert list(report[rel]["flags"]) == EXPECTED[rel], (rel, report[rel]["stats"])
    for rel in flagged.demo:
        assert report[rel]["flags"] == {}
    summary = report["summary"]
    assert summary["clips"] == 8 and summary["speakers"] == 2  # M000 and flagged
    assert summary["flagged"] == {"small_face": 1, "blurry": 2, "static": 1, "silent": 1, "shifted": 1}
    assert summary["flagged_clips"] == {"small_face": ["flagged/tiny.mp4"], "static": ["flagged/still.mp4"],
                                        "blurry": ["flagged/blurred.mp4", "flagged/tiny.mp4"],
                                        "silent": ["flagged/mute.mp4"], "shifted": ["flagged/shifted.mp4"]}
    shifted = report["flagged/shifted.mp4"]["stats"]
    assert abs(shifted["offset"] - SHIFT) <= 1 and shifted["offset_method"] == "loudness"
    assert "data_max_offset 2" in report["flagged/shifted.mp4"]["flags"]["shifted"]
    assert all(abs(report[rel]["stats"]["offset"]) <= 1 for rel in flagged.demo)
    assert summary["av_offset"]["method"] == "loudness"
    assert "data_min_face_px 64" in report["flagged/tiny.mp4"]["flags"]["small_face"]
    assert report["flagged/mute.mp4"]["stats"]["silence"] == 1.0
    assert report["flagged/still.mp4"]["stats"]["static"] > 0.9
    log = "\n".join(flagged.unfiltered.log)
    assert "data report: 8 clips" in log and "2 speakers" in log
    assert "flagged small_face     1" in log and "sharpness (Laplacian variance)   median" in log


def test_flags_leave_the_filelists_alone_without_data_filter(flagged):
    report = flagged.unfiltered.report
    everything = {v["clip_id"] for v in report.values() if data_report.is_entry(v)}
    assert flagged.unfiltered.listed == everything
    assert not any("filtered" in v for v in report.values() if data_report.is_entry(v))
    assert report["summary"]["filtered"] == []


def test_data_filter_drops_flagged_clips_with_the_reason(flagged):
    report = flagged.filtered.report
    assert flagged.filtered.stale and flagged.filtered.fresh
    assert flagged.filtered.listed == {clip_id_for(rel) for rel in flagged.demo}
    for rel, flag in KINDS.items():
        assert report[rel]["filtered"] is True and list(report[rel]["flags"]) == EXPECTED[rel]
        assert report[rel]["stats"] == flagged.unfiltered.report[rel]["stats"]  # reused, not recomputed
        assert os.path.isdir(os.path.join(flagged.root, clip_id_for(rel)))  # the clip folder stays
    assert report["summary"]["data_filter"] is True
    assert report["summary"]["filtered"] == sorted(KINDS)
    assert os.path.isfile(os.path.join(flagged.root, "report.png"))


def test_split_files_drop_filtered_clips_with_the_reason():
    from talkingface.data.dataprocess.hyperlipsbase_process import follow_split_files
    report = {"a.mp4": {"video": "a.mp4", "clip_id": "a", "status": "ok", "flags": {}},
              "b.mp4": {"video": "b.mp4", "clip_id": "b", "status": "ok", "flags": {"silent": "..."},
                        "filtered": True},
              "c.mp4": {"video": "c.mp4", "clip_id": "c", "status": "ok", "flags": {"static": "..."},
                        "filtered": True}}
    splits, summary = follow_split_files({"train": ["a", "b"]}, report)
    assert splits["train"] == ["a"]
    assert summary["train"]["dropped"] == [{"clip": "b", "reason": "data_filter: silent"}]
    assert summary["unlisted"]["count"] == 0  # c: filtered, not merely unlisted


def test_fix_removes_the_offset_and_redoes_nothing_else(flagged):
    from talkingface.data.dataprocess import av_offset
    report, before = flagged.fixed.report, flagged.filtered.report
    assert flagged.fixed.stale and flagged.fixed.fresh
    assert report["summary"]["av_offset"]["mode"] == "fix" and report["summary"]["av_offset"]["updated"] == 1
    rel = "flagged/shifted.mp4"
    stats = report[rel]["stats"]
    assert stats["offset_applied"] == stats["offset"] == before[rel]["stats"]["offset"] and stats["offset_left"] == 0
    assert "shifted" not in report[rel]["flags"] and clip_id_for(rel) in flagged.fixed.listed
    for video, entry in report.items():
        if data_report.is_entry(entry):
            assert entry["reused"] is True   # clip folders kept: crops and stats untouched
            if video != rel:
                assert entry["stats"]["offset_applied"] == 0 and entry["stats"] == before[video]["stats"]
    clip_dir = os.path.join(flagged.root, clip_id_for(rel))
    assert os.path.isfile(os.path.join(clip_dir, av_offset.ORIGINAL_AUDIO))
    original = av_offset._read_wav(os.path.join(clip_dir, av_offset.ORIGINAL_AUDIO))
    fixed = av_offset._read_wav(os.path.join(clip_dir, "audio.wav"))   # re-detection: tests/unit/data/test_av_offset.py
    assert np.abs(fixed - shift_audio(original, stats["offset"])).max() < 1e-4   # delayed by the offset
