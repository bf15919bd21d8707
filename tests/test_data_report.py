"""The data report of preprocessing: per-clip columns, totals, flags, data_filter, histograms."""
import json
import logging
import os
import subprocess
from types import SimpleNamespace

import pytest

from talkingface.config import Config
from talkingface.data.dataprocess import data_report
from talkingface.data.dataprocess.demo import ensure_demo_dataset
from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor, clip_id_for
from talkingface.data.dataset.clip import SPLITS, filelist_path
from talkingface.utils.ffmpeg import ffmpeg_exe

COLUMNS = {"face_px", "face_px_min", "sharpness", "static", "silence"}
# One derived clip per flag: the flag it must get and nothing else.
KINDS = {"flagged/tiny.mp4": "small_face", "flagged/blurred.mp4": "blurry",
         "flagged/still.mp4": "static", "flagged/mute.mp4": "silent"}
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
        assert COLUMNS <= set(stats)
        assert 100 < stats["face_px_min"] <= stats["face_px"] < 256  # the demo face is ~140 px
        assert stats["sharpness"] > 20 and 0 <= stats["static"] <= 0.5 and 0 <= stats["silence"] <= 0.6
        assert entry["flags"] == {} and "filtered" not in entry
    summary = report["summary"]
    assert (summary["clips"], summary["speakers"], summary["skipped"]) == (3, 1, 0)
    assert summary["minutes"] == pytest.approx(3 * 2.0 / 60, abs=0.01)
    assert set(summary["medians"]) == COLUMNS and all(v is not None for v in summary["medians"].values())
    assert summary["flagged"] == {"small_face": 0, "blurry": 0, "static": 0, "silent": 0}
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
    import numpy as np
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


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    """3 demo clips and one clip of each flagged kind, preprocessed without and then with data_filter."""
    tmp = tmp_path_factory.mktemp("data_report")
    data_root, root = str(tmp / "data"), str(tmp / "pre")
    demo = ensure_demo_dataset(data_root, num_clips=3, seconds=1.2)
    _make_flagged_clips(data_root, demo[0], str(tmp))

    def config(**values):
        return Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
            data_root=data_root, preprocessed_root=root, generate_demo=False, num_preprocess_workers=1, **values))

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
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(unfiltered=unfiltered, filtered=filtered, root=root,
                           demo=[os.path.relpath(p, data_root) for p in demo])


def test_each_kind_is_flagged_for_its_reason(flagged):
    report = flagged.unfiltered.report
    for rel, flag in KINDS.items():
        assert report[rel]["status"] == "ok", report[rel]
        assert list(report[rel]["flags"]) == EXPECTED[rel], (rel, report[rel]["stats"])
    for rel in flagged.demo:
        assert report[rel]["flags"] == {}
    summary = report["summary"]
    assert summary["clips"] == 7 and summary["speakers"] == 2  # M000 and flagged
    assert summary["flagged"] == {"small_face": 1, "blurry": 2, "static": 1, "silent": 1}
    assert summary["flagged_clips"] == {"small_face": ["flagged/tiny.mp4"], "static": ["flagged/still.mp4"],
                                        "blurry": ["flagged/blurred.mp4", "flagged/tiny.mp4"],
                                        "silent": ["flagged/mute.mp4"]}
    assert "data_min_face_px 64" in report["flagged/tiny.mp4"]["flags"]["small_face"]
    assert report["flagged/mute.mp4"]["stats"]["silence"] == 1.0
    assert report["flagged/still.mp4"]["stats"]["static"] > 0.9
    log = "\n".join(flagged.unfiltered.log)
    assert "data report: 7 clips" in log and "2 speakers" in log
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
