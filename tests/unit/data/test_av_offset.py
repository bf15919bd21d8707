"""Audio-video offsets at preprocessing (data/dataprocess/av_offset.py): the choice of method, the
syncnet_v2 arithmetic, detection and fix on demo clips, re-runs that redo only what changed."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from talkingface.data.dataprocess import av_offset
from talkingface.model.av_sync import shift_audio
from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file
from talkingface.utils.errors import CheckpointError


def _clip(root, index=0):
    """(clip folder, meta, crops, audio) of a preprocessed clip of `root`."""
    names = sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "meta.json")))
    clip_dir = os.path.join(root, names[index])
    with open(os.path.join(clip_dir, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    return clip_dir, meta, av_offset.read_crops(clip_dir, meta["n_frames"]), \
        av_offset._read_wav(os.path.join(clip_dir, "audio.wav"))


def _detector(make_config, root, **values):
    return av_offset.OffsetDetector(make_config("HyperLipsBase", root, **{"av_offset": "detect", **values}))


# --- which method ---------------------------------------------------------------------------------

def _expert(folder, accuracy):
    """A random-init SyncNet checkpoint recording `accuracy` (None: no validation recorded)."""
    from talkingface.model import build_network
    torch.manual_seed(0)
    path = checkpoint_path(str(folder), 1)
    save_checkpoint_file({"state_dict": build_network("SyncNet").state_dict(), "model": "SyncNet", "global_step": 1,
                          "validation": None if accuracy is None else {"accuracy": accuracy, "step": 1}}, path)
    return path


def test_without_an_expert_offsets_are_not_measured_and_the_setting_is_named(make_config, tmp_path):
    detector = _detector(make_config, tmp_path, syncnet_v2_path=str(tmp_path / "none.model"))
    assert detector.method is None and detector.stamp is None
    summary = detector.describe()
    assert summary["note"] == "no expert: offsets not measured" and "av_offset_method" in summary["enable"]
    assert _detector(make_config, tmp_path, av_offset="off").describe()["note"] == "av_offset=off"
    assert _detector(make_config, tmp_path, av_offset=False).mode == "off"   # a bare off in YAML


def test_our_expert_is_used_only_clearly_above_chance(make_config, tmp_path):
    nowhere = str(tmp_path / "none.model")
    weak, unknown, good = (_expert(tmp_path / name, acc) for name, acc in (("weak", 0.7), ("unknown", None),
                                                                             ("good", 0.9)))
    for path in (weak, unknown):
        assert _detector(make_config, tmp_path, syncnet_v2_path=nowhere, sync_expert_path=path).method is None
        with pytest.raises(CheckpointError, match="validation accuracy"):
            _detector(make_config, tmp_path, syncnet_v2_path=nowhere, sync_expert_path=path,
                      av_offset_method="SyncNet")
    chosen = _detector(make_config, tmp_path, syncnet_v2_path=nowhere, sync_expert_path=good)
    assert chosen.method == "SyncNet" and chosen.source["accuracy"] == 0.9
    with pytest.raises(CheckpointError, match="syncnet_v2_path"):
        _detector(make_config, tmp_path, syncnet_v2_path=nowhere, av_offset_method="syncnet_v2")


# --- syncnet_v2: syncnet_python's arithmetic --------------------------------------------------------

def test_syncnet_v2_offsets_follow_syncnet_pythons_arithmetic(make_config, tmp_path, demo_base_data):
    """Random weights (as the LSE test): the detector's offset and raw confidence equal those of
    syncnet_python's evaluate() written out: 5-frame windows of 224 px BGR crops, MFCC columns
    4i..4i+20, per video window the distances to the 2*vshift+1 zero-padded audio windows, their
    mean over windows, offset = vshift - argmin, confidence = median - min."""
    import cv2

    from talkingface.model.mfcc import syncnet_mfcc
    from talkingface.model.syncnet_v2 import SyncNetV2, load_syncnet_v2
    torch.manual_seed(0)
    path = tmp_path / "syncnet_v2.model"
    torch.save({"__S__." + k: v for k, v in SyncNetV2().state_dict().items()}, path)
    vshift = 4
    _, _, crops, wav = _clip(demo_base_data["preprocessed_root"])
    crops, wav = crops[:14], shift_audio(wav, -2)[:14 * 640]
    detector = _detector(make_config, tmp_path, syncnet_v2_path=str(path), sync_vshift=vshift)
    assert detector.method == "syncnet_v2"
    found = detector.estimate(crops, wav)

    net = load_syncnet_v2(str(path), torch.device("cpu"))
    video = np.stack([cv2.resize(c, (224, 224), interpolation=cv2.INTER_AREA) for c in crops]).astype(np.float32)
    video = torch.from_numpy(video.transpose(3, 0, 1, 2))[None]          # (1, 3, T, 224, 224)
    mfcc = torch.from_numpy(syncnet_mfcc(wav))[None, None]               # (1, 1, 13, 4T)
    last = min(len(crops), len(wav) // 640) - 5
    with torch.no_grad():
        lip = net.forward_lip(torch.cat([video[:, :, i:i + 5] for i in range(last)]))
        aud = net.forward_aud(torch.cat([mfcc[:, :, :, 4 * i:4 * i + 20] for i in range(last)]))
    window = 2 * vshift + 1
    padded = F.pad(aud, (0, 0, vshift, vshift))
    dists = [F.pairwise_distance(lip[[i]].repeat(window, 1), padded[i:i + window]) for i in range(last)]
    mean = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mean, 0)
    assert found["offset"] == vshift - int(minidx)
    assert found["sync_confidence"] == pytest.approx(float(torch.median(mean) - minval), abs=1e-3)


# --- detection and fix on demo clips (the weight-free estimator: the demo mouth follows the loudness)

def test_loudness_finds_known_shifts_on_demo_clips(make_config, tmp_path, demo_base_data):
    detector = _detector(make_config, tmp_path, av_offset_method="loudness")
    for index in range(3):
        _, _, crops, wav = _clip(demo_base_data["preprocessed_root"], index)
        for lead in (5, -7):   # sound 5 frames early, 7 late: syncnet_python's offsets +5, -7
            found = detector.estimate(crops, shift_audio(wav, -lead))
            assert abs(found["offset"] - lead) <= 1 and found["confidence"] > 0.3, (index, lead, found)


def test_fix_shifts_the_audio_and_later_runs_redo_only_what_changed(make_config, tmp_path, demo_base_data,
                                                                    monkeypatch):
    source, meta, crops, wav = _clip(demo_base_data["preprocessed_root"])
    clip_dir = str(tmp_path / "clip")
    shutil.copytree(source, clip_dir)
    av_offset._write_clip_audio(clip_dir, shift_audio(wav, -5))    # its sound comes 5 frames early
    shifted = av_offset._read_wav(os.path.join(clip_dir, "audio.wav"))
    fix = _detector(make_config, tmp_path, av_offset="fix", av_offset_method="loudness")

    record = av_offset.update_clip(clip_dir, fix, meta)
    assert abs(record["offset"] - 5) <= 1 and record["applied"] == record["offset"]
    assert os.path.isfile(os.path.join(clip_dir, av_offset.ORIGINAL_AUDIO))
    fixed = av_offset._read_wav(os.path.join(clip_dir, "audio.wav"))
    assert abs(fix.estimate(crops, fixed)["offset"]) <= 1       # re-detected on the fixed audio
    mel = np.load(os.path.join(clip_dir, "mel.npy"))
    assert mel.shape[0] == 80 and abs(mel.shape[1] - len(fixed) / 200) <= 1
    meta = json.load(open(os.path.join(clip_dir, "meta.json"), encoding="utf-8"))
    assert meta["av_offset"] == record

    def no_detection(*args):
        raise AssertionError("detected again although nothing it depends on changed")
    monkeypatch.setattr(av_offset.OffsetDetector, "estimate", no_detection)
    assert av_offset.update_clip(clip_dir, fix, meta) == record                   # same settings: nothing
    detect = _detector(make_config, tmp_path, av_offset="detect", av_offset_method="loudness")
    undone = av_offset.update_clip(clip_dir, detect, meta)                        # detect: the source's audio back
    assert undone["applied"] == 0 and undone["offset"] == record["offset"]
    assert not os.path.exists(os.path.join(clip_dir, av_offset.ORIGINAL_AUDIO))
    np.testing.assert_array_equal(av_offset._read_wav(os.path.join(clip_dir, "audio.wav")), shifted)
    strict = _detector(make_config, tmp_path, av_offset="fix", av_offset_method="loudness",
                       av_offset_min_confidence=0.999)
    assert av_offset.update_clip(clip_dir, strict, dict(meta, av_offset=undone))["applied"] == 0   # not confident


def test_columns_say_what_is_left_in_the_audio():
    record = {"offset": 6, "confidence": 0.5, "method": "loudness", "applied": 0}
    assert av_offset.columns(record, 0.3) == {"offset": 6, "offset_confidence": 0.5, "offset_method": "loudness",
                                              "offset_applied": 0, "offset_left": 6}
    assert av_offset.columns(dict(record, applied=6), 0.3)["offset_left"] == 0
    assert av_offset.columns(record, 0.6)["offset_left"] is None                  # not confident: unknown
    assert av_offset.columns({"applied": 0}, 0.3)["offset"] is None



# --- the SyncNet path, with a stand-in for a trained expert -------------------------------------------

class LoudnessExpert(torch.nn.Module):
    """Our SyncNet's interface, constructed (as test_evaluator's LoudnessSyncNetV2): the face
    embedding is the mouth darkness of the 5 lower halves (N, 15, 64, 128), the audio embedding the
    level of the mel chunk (N, 1, 80, 16) in 5 parts; both centred and L2-normalised. A SyncNet
    trained on the demo set for 80 steps (val accuracy 0.625, ~25 min on two loaded cores) was no
    substitute: it found 3 of 9 known shifts (av_offset.EXPERT_MIN_ACCURACY has the command)."""

    @staticmethod
    def _norm(x):
        return F.normalize(x - x.mean(1, keepdim=True), dim=1)

    def forward(self, mel, face):
        darkness = -face.reshape(len(face), 5, 3, 64, 128)[:, :, :, 15:54, 36:92].mean((2, 3, 4))
        level = F.adaptive_avg_pool1d(mel.mean(2), 5)[:, 0]
        return self._norm(level), self._norm(darkness)


def test_the_syncnet_path_finds_and_fixes_known_shifts(make_config, tmp_path, demo_base_data):
    values = dict(syncnet_v2_path=str(tmp_path / "none.model"), sync_expert_path=_expert(tmp_path, 0.9))
    detector = _detector(make_config, tmp_path, **values)
    assert detector.method == "SyncNet"
    detector._net = (LoudnessExpert(), torch.device("cpu"))
    for index in range(3):
        _, _, crops, wav = _clip(demo_base_data["preprocessed_root"], index)
        for lead in (5, -7):   # sound 5 frames early, 7 late
            found = detector.estimate(crops, shift_audio(wav, -lead))
            assert abs(found["offset"] - lead) <= 1, (index, lead, found)

    source, meta, crops, wav = _clip(demo_base_data["preprocessed_root"])
    clip_dir = str(tmp_path / "clip")
    shutil.copytree(source, clip_dir)
    av_offset._write_clip_audio(clip_dir, shift_audio(wav, 7))     # its sound 7 frames late
    fix = _detector(make_config, tmp_path, av_offset="fix", av_offset_min_confidence=0.0, **values)
    fix._net = detector._net
    record = av_offset.update_clip(clip_dir, fix, meta)
    assert abs(record["offset"] + 7) <= 1 and record["applied"] == record["offset"]
    assert abs(fix.estimate(crops, av_offset._read_wav(os.path.join(clip_dir, "audio.wav")))["offset"]) <= 1
