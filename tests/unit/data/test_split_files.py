"""Published splits: split_files lists in a dataset's config make the filelists instead of a draw."""
import hashlib
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from talkingface.config import Config
from talkingface.data.dataprocess.hyperlipsbase_process import (HyperLipsBasePreprocessor, clip_id_for,
                                                                follow_split_files)
from talkingface.data.dataset.clip import filelist_path
from talkingface.utils.errors import ConfigError, InputError

NEUTRAL_1, HAPPY_1, NEUTRAL_2 = (f"M000/front/{e}/level_1/{n}" for e, n in
                                 (("neutral", "001"), ("happy", "001"), ("neutral", "002")))


def split_config(tmp, **overrides):
    values = dict(data_root=str(tmp / "data"), preprocessed_root=str(tmp / "pre"), num_preprocess_workers=1,
                  demo_num_clips=3, demo_clip_seconds=1.0)
    values.update(overrides)
    return Config(model="HyperLipsBase", dataset="demo", config_dict=values)


def filelists(config):
    out = {}
    for split in ("train", "val", "test"):
        with open(filelist_path(config["preprocessed_root"], split)) as f:
            out[split] = f.read().split()
    return out


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """3 demo clips and an empty video; train lists two clips (one with its extension) and the empty
    video, test one clip that does not exist (LRS2 style, with a second word); val has no file."""
    tmp = tmp_path_factory.mktemp("split_files")
    (tmp / "data" / "extra").mkdir(parents=True)
    (tmp / "data" / "extra" / "broken.mp4").write_bytes(b"")
    (tmp / "data" / "lists").mkdir()
    (tmp / "data" / "lists" / "train.txt").write_text(f"{NEUTRAL_1}.mp4\n{HAPPY_1}\n\nextra/broken\n")
    test_list = tmp / "test.txt"
    test_list.write_text("M000/front/neutral/level_1/009 NF\n")
    config = split_config(tmp, split_files={"train": "lists/train.txt", "test": str(test_list)})
    pre = HyperLipsBasePreprocessor(config)
    records = Records()
    logger = logging.getLogger("talkingface.data.dataprocess.hyperlipsbase_process")
    logger.addHandler(records)
    try:
        report = pre.run()
    finally:
        logger.removeHandler(records)
    return SimpleNamespace(config=config, pre=pre, report=report, test_list=test_list, warnings=records.messages)


def test_filelists_follow_the_split_files(listed):
    assert filelists(listed.config) == {"train": sorted([clip_id_for(NEUTRAL_1), clip_id_for(HAPPY_1)]),
                                        "val": [], "test": []}


def test_missing_dropped_and_unlisted_clips_are_reported(listed):
    with open(os.path.join(listed.config["preprocessed_root"], "report.json")) as f:
        summary = json.load(f)["split_files"]
    assert summary["train"] == {"path": os.path.join(listed.config["data_root"], "lists", "train.txt"),
                                "listed": 3, "found": 2, "missing": [],
                                "dropped": [{"clip": "extra/broken", "reason": "empty_file"}]}
    assert summary["test"] == {"path": str(listed.test_list), "listed": 1, "found": 0,
                               "missing": ["M000/front/neutral/level_1/009"], "dropped": []}
    assert "val" not in summary
    assert summary["unlisted"]["count"] == 1 and summary["unlisted"]["examples"] == [clip_id_for(NEUTRAL_2)]
    warned = [m for m in listed.warnings if "split file" in m]
    assert len(warned) == 2
    assert "3 clips listed, 2 found; 0 missing from data_root, 1 dropped" in warned[0]
    assert "1 clips listed, 0 found; 1 missing from data_root, 0 dropped" in warned[1]


def test_editing_a_split_file_rewrites_the_filelists_only(listed):
    pre, root = listed.pre, listed.config["preprocessed_root"]
    assert not pre.is_stale()
    frame = os.path.join(root, clip_id_for(NEUTRAL_1), "0.jpg")
    stamp = os.stat(frame).st_mtime_ns
    original = listed.test_list.read_text()
    try:
        listed.test_list.write_text(original + f"{NEUTRAL_2} NF\n")
        assert pre.is_stale()
        report = pre.run()
        assert all(e.get("reused") for e in report.values() if e["status"] == "ok")
        assert os.stat(frame).st_mtime_ns == stamp
        assert filelists(listed.config)["test"] == [clip_id_for(NEUTRAL_2)]
        assert not pre.is_stale()
    finally:
        listed.test_list.write_text(original)
    assert pre.is_stale()
    pre.run()
    assert filelists(listed.config)["test"] == []


def test_a_missing_split_file_is_a_one_line_error_before_any_work(listed, tmp_path):
    config = split_config(tmp_path, data_root=listed.config["data_root"], split_files={"val": "lists/val.txt"})
    with pytest.raises(InputError, match=r"cannot read the val split file .*lists/val.txt \(split_files.val"):
        HyperLipsBasePreprocessor(config)
    assert not os.path.exists(config["preprocessed_root"])


@pytest.mark.parametrize("value, message", [
    ("train.txt", "split_files must be ~ or a mapping of train, val and/or test to file paths"),
    ({}, "split_files must be ~ or a mapping"),
    ({"tran": "a.txt"}, "split_files names an unknown split 'tran': use train, val or test"),
    ({"test": ["a.txt"]}, r"split_files.test must be a path \(got \['a.txt'\]\)"),
    ({"test": None}, r"split_files.test must be a path \(got null\)"),
])
def test_bad_split_files_are_one_line_config_errors(value, message, tmp_path):
    with pytest.raises(ConfigError, match=message) as error:
        split_config(tmp_path, split_files=value)
    assert "\n" not in str(error.value)


def test_names_match_with_or_without_extension_and_shared_clips_are_warned(caplog):
    from talkingface.data.dataprocess.hyperlipsbase_process import _log_split_files
    report = {"a/x.mp4": {"clip_id": "a__x", "status": "ok"}, "a/y.mov": {"clip_id": "a__y", "status": "ok"},
              "b/z.mp4": {"clip_id": "b__z", "status": "ok"}}
    splits, summary = follow_split_files({"train": ["a/x.mp4", "./a/y"], "test": ["a/y.mov"]}, report)
    assert splits == {"train": ["a__x", "a__y"], "val": [], "test": ["a__y"]}
    assert summary["unlisted"]["count"] == 1
    with caplog.at_level(logging.WARNING):
        _log_split_files(summary, splits, {"train": "train.txt", "test": "test.txt"})
    assert "1 clips (e.g. a__y) are in both the train and the test split files" in caplog.text


def test_provenance_records_the_split_files_hashes(tmp_path):
    from talkingface.evaluator import Evaluator
    (tmp_path / "data").mkdir()
    (tmp_path / "test.txt").write_text(f"{NEUTRAL_1}\n")
    device = SimpleNamespace(device=torch.device("cpu"), settings=lambda: None,  # a LipSyncer on torch
                             networks=lambda settings: (torch.nn.Identity(), None))
    config = split_config(tmp_path, device="cpu", results_root=str(tmp_path), split_files={"test": "../test.txt"})
    facts = Evaluator(config)._facts(device, "test", None)
    digest = hashlib.sha256((tmp_path / "test.txt").read_bytes()).hexdigest()
    assert facts["split_files"] == {"test": {"path": str(tmp_path / "test.txt"), "sha256": digest}}
    assert "split_files" not in Evaluator(split_config(tmp_path, device="cpu"))._facts(device, "test", None)
