"""The evaluation protocol: --mode=evaluate scores what --mode=infer gives, on the test split, with
one face tracker, one reference-frame policy, and HR checkpoints paired with their Base."""
import json
import logging
import os

import numpy as np
import pytest
import torch

from talkingface.config import Config


def _config(values, **extra):
    return Config(model=extra.pop("model", "HyperLipsBase"), dataset="demo", config_dict=dict(values, **extra))


# ---------------------------------------------------------------------------- same numbers as infer + score
@pytest.mark.slow
def test_evaluate_equals_the_scorer_on_the_infer_output(demo_split_data, random_base_checkpoint, workdir,
                                                        monkeypatch, capsys):
    from run_talkingface import main
    from talkingface.data.dataset.clip import Clip, read_filelist
    from talkingface.evaluator import score
    from talkingface.quick_start import quick_start

    def no_trainer(config):
        raise AssertionError("--mode=evaluate built a trainer")
    monkeypatch.setattr(quick_start, "build_trainer", no_trainer)
    options = [f"--{k}={v}" for k, v in demo_split_data.items()] + [
        "--model=HyperLipsBase", "--dataset=demo", "--device=cpu", f"--checkpoint={random_base_checkpoint['path']}",
        "--metrics=[PSNR,SSIM,LMD]", "--eval_num_sample_videos=0"]
    assert main(options + ["--mode=evaluate"]) == 0
    with open("results/demo/HyperLipsBase/metrics.json") as f:
        results = json.load(f)

    clip = Clip(read_filelist(_config(demo_split_data), "test")[0])
    assert results["split"] == "test" and results["clips"] == 1 and results["frames"] == clip.n_frames
    assert results["checkpoint"]["path"] == os.path.abspath(random_base_checkpoint["path"])
    assert results["checkpoint"]["step"] == 1 and len(results["checkpoint"]["sha256"]) == 64
    # infer_bf16 is left at auto: bf16 exactly where this CPU runs it natively
    assert results["reference_frame"] == "first"
    assert results["precision"] == ("bf16" if _native_bf16_cpu() else "fp32")
    assert results["tracker"]["face_min_size"] == 24 and "toolkit_commit" in results

    source = clip.meta["source"]
    assert main(options + ["--mode=infer", f"--video={source}", f"--audio={clip.audio_path}",
                           "--output=infer.mp4"]) == 0
    capsys.readouterr()
    assert score.main(["--generated", "infer.mp4", "--real", source, "--metrics", "PSNR", "SSIM", "LMD",
                       "--size", "256", "--max_frames", str(clip.n_frames), "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out)["mean"]
    evaluated = results["per_clip"][clip.id]
    assert scored["frames"] == evaluated["frames"] == clip.n_frames
    assert abs(scored["PSNR"] - evaluated["PSNR"]) < 0.1
    assert abs(scored["SSIM"] - evaluated["SSIM"]) < 0.005
    assert abs(scored["LMD"] - evaluated["LMD"]) < 0.1 * evaluated["LMD"] + 1e-3
    assert evaluated["PSNR"] < 60          # the mouth was generated, not copied


def _native_bf16_cpu():
    """Whether this CPU has native bfloat16 (oneDNN's check), asked of torch itself."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_use_bf16_auto_means_native_bf16_on_the_cpu():
    from talkingface.utils.runtime import use_bf16
    cpu = torch.device("cpu")
    assert use_bf16(True, cpu) is True and use_bf16(False, cpu) is False
    assert use_bf16("auto", cpu) is _native_bf16_cpu()
    assert use_bf16("auto", torch.device("cuda")) is False


@pytest.mark.parametrize("settings, expected", [({"infer_bf16": False}, "fp32"), ({"infer_bf16": True}, "bf16"),
                                                ({"infer_bf16": "auto"}, None),
                                                ({"infer_bf16": "auto", "infer_int8": True}, "int8")])
def test_metrics_json_records_the_precision_of_the_settings(settings, expected, tmp_path):
    from types import SimpleNamespace

    from talkingface.evaluator import Evaluator
    expected = expected or ("bf16" if _native_bf16_cpu() else "fp32")
    config = _config({"device": "cpu", "results_root": str(tmp_path)}, **settings)
    torch_networks = SimpleNamespace(device=torch.device("cpu"), settings=lambda: None,
                                     networks=lambda settings: (torch.nn.Identity(), None))
    facts = Evaluator(config)._facts(torch_networks, "test", None)
    assert facts["precision"] == expected and facts["backend"] == "torch"


# ---------------------------------------------------------------------------- reference frame policy
def test_reference_policies():
    from talkingface.model.inputs import masked_input, reference_index
    assert [reference_index("first", k, 10) for k in (0, 7)] == [0, 0]
    assert [reference_index("same", k, 10) for k in (0, 7)] == [0, 7]
    assert [reference_index("half_clip", k, 10) for k in (0, 4, 5, 9)] == [5, 9, 0, 4]
    # an unknown policy ("middle") is refused by the config: tests/unit/config/test_config.py test_bad_values_are_one_line
    windows = torch.rand(2, 3, 5, 8, 8)     # (N, 3, T, H, W): the height is masked, not the time axis
    face = masked_input(windows, windows)
    assert face[:, :3, :, 4:].abs().sum() == 0 and torch.equal(face[:, :3, :, :4], windows[..., :4, :])


class _Recorder(torch.nn.Module):
    """A stand-in Base generator that records its face input and returns grey faces."""

    def __init__(self):
        super().__init__()
        self.faces = []

    def forward(self, audio, face):
        self.faces.append(face.detach().clone())
        return torch.full((face.shape[0], 3, face.shape[2], face.shape[3]), 0.5)

    def encode_face(self, face):  # inference runs the network in these two parts
        return [face[:, :1]] * 4

    def generate(self, audio, face, features, region=None):  # region: the rectangle that is pasted
        out = self(audio, face)
        if region is None:
            return out
        top, bottom, left, right = region
        return out[:, :, top:bottom, left:right]


@pytest.mark.parametrize("policy", ["first", "same", "half_clip"])
def test_renderer_feeds_the_reference_of_the_policy(policy, make_config):
    from talkingface.inference.render import BASE_SIZE, LipSyncRenderer
    frames = [np.full((64, 64, 3), 20 * k, np.uint8) for k in range(6)]
    boxes = np.tile(np.float32([0, 0, 64, 64]), (6, 1))
    base = _Recorder()
    from talkingface.inference.settings import InferSettings
    settings = InferSettings.from_config(make_config("HyperLipsBase"), infer_batch_size=3, infer_bf16=False,
                                         reference_frame=policy, infer_mask_feather=0.06, infer_landmark_window=3,
                                         face_fade_frames=0)
    renderer = LipSyncRenderer(base, None, boxes, (64, 64), settings, frame_at=lambda i: frames[i].copy(),
                               mel=np.zeros((80, 200), np.float32))
    try:
        for start in (0, 3):
            renderer.render([(k, k, frames[k].copy()) for k in range(start, start + 3)])
    finally:
        renderer.close()
    references = torch.cat(base.faces)[:, 3:].mul(255).round()
    expected = {"first": [0] * 6, "same": list(range(6)), "half_clip": [3, 4, 5, 0, 1, 2]}[policy]
    assert [int(r[0, 0, 0]) for r in references] == [20 * k for k in expected]
    assert torch.cat(base.faces)[:, :3, BASE_SIZE // 2:].abs().sum() == 0     # lower half masked


def test_half_clip_needs_frames_in_memory(random_base_checkpoint, tmp_path):
    from talkingface.inference.pipeline import LipSyncer
    from talkingface.utils.errors import ConfigError
    config = Config(model="HyperLipsBase", dataset="demo", config_dict={
        "device": "cpu", "checkpoint": random_base_checkpoint["path"], "reference_frame": "half_clip"})
    wav = tmp_path / "a.wav"
    from talkingface.utils.audio import save_wav
    save_wav(str(wav), np.zeros(16000, np.float32))
    with pytest.raises(ConfigError, match="half_clip needs the frames in memory"):
        LipSyncer(config).run(str(tmp_path / "video.mp4"), str(wav), str(tmp_path / "out.mp4"))


# ---------------------------------------------------------------------------- one face tracker
class _ScriptedDetector:
    """FaceDetector's interface, answering from a script: one list of detections per frame."""
    script = []

    def __init__(self, *args, **kwargs):
        self.frame = 0

    def detect(self, frame):
        found = self.script[self.frame]
        self.frame += 1
        return found

    def close(self):
        pass


def test_preprocessing_and_inference_track_faces_alike(tmp_path, monkeypatch):
    """The preprocessing's streaming tracker and utils.tracking.track_faces give the same boxes:
    a small false detection dropped, a 2-frame gap interpolated, a second face not followed, a
    6-frame gap ending the run."""
    from talkingface.data.dataprocess.hyperlipsbase_process import _CropWriter
    from talkingface.utils import tracking
    rng = np.random.default_rng(0)
    face = lambda k: [40.0 + k + rng.normal(), 30.0 + rng.normal(), 140.0 + k, 150.0, 0.9]
    script = [[face(k)] for k in range(6)] + [[], []] + [[face(k)] for k in range(8, 14)]
    script[3] = [[150.0, 10.0, 160.0, 18.0, 0.95], face(3)]               # a 10 px "face" first: dropped
    script[10] = [[0.0, 0.0, 120.0, 120.0, 0.99], face(10)]               # another person: not followed
    script += [[] for _ in range(6)] + [[face(k)] for k in range(20, 30)]
    _ScriptedDetector.script = script
    settings = dict(face_min_size=24, face_continuity_iou=0.3, face_max_gap=5, box_smooth_window=5,
                    face_pad_bottom=10, detect_max_side=640)
    frames = [np.zeros((200, 200, 3), np.uint8)] * len(script)

    monkeypatch.setattr(tracking, "FaceDetector", _ScriptedDetector)
    expected = tracking.track_faces(frames, 200, 200, **{arg: settings[key] for key, arg in tracking.TRACKER_KEYS.items()})

    task = dict(settings, crop_size=32, jpeg_quality=90, tmp_dir=str(tmp_path))
    tracker, crops = tracking.FaceTracker.from_settings(task, 200, 200), _CropWriter(task)
    detector = _ScriptedDetector()
    for frame in frames:   # as preprocessing streams a video to disk
        crops.add(frame, tracker.push(detector.detect(frame)))
    crops.write(tracker.finish())
    assert tracker.runs == [(0, 14), (20, 30)]
    assert np.isnan(expected[14:20]).all()
    got = np.stack([crops.boxes[k] for k in list(range(14)) + list(range(20, 30))])
    np.testing.assert_array_equal(got, expected[list(range(14)) + list(range(20, 30))])  # bit for bit


def test_tracker_settings_make_preprocessed_data_stale(demo_base_data):
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor
    assert not HyperLipsBasePreprocessor(_config(demo_base_data)).is_stale()
    for key, value in (("face_min_size", 40), ("face_max_gap", 2), ("face_continuity_iou", 0.5)):
        assert HyperLipsBasePreprocessor(_config(demo_base_data, **{key: value})).is_stale(), key


# ---------------------------------------------------------------------------- HR knows its Base
def _save(path, network, **extra):
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import save_checkpoint_file
    save_checkpoint_file({"state_dict": build_network(network).state_dict(), **extra}, path)
    return path


def test_hr_runs_on_the_base_it_was_trained_on(tmp_path, caplog):
    from talkingface.utils.checkpoint import checkpoint_path
    from talkingface.utils.errors import CheckpointError
    from talkingface.utils.fingerprint import checkpoint_fingerprint, paired_base_checkpoint
    root = tmp_path / "checkpoints"
    torch.manual_seed(0)
    old = _save(checkpoint_path(str(root / "demo" / "HyperLipsBase"), 1), "HyperLipsBase")
    hr = _save(checkpoint_path(str(root / "demo" / "HyperLipsHR"), 1), "HRDecoder",
               base_checkpoint=checkpoint_fingerprint(old))
    torch.manual_seed(1)
    new = _save(checkpoint_path(str(root / "demo" / "HyperLipsBase"), 2), "HyperLipsBase")   # Base trained further
    config = Config(model="HyperLipsHR", dataset="demo", config_dict={"checkpoint_root": str(root), "device": "cpu"})

    with caplog.at_level(logging.INFO, logger="talkingface"):
        path, fingerprint = paired_base_checkpoint(config, hr)
    assert path == os.path.abspath(old) and fingerprint["step"] == 1
    assert any("runs on the Base checkpoint it was trained on" in r.getMessage() and old in r.getMessage()
               for r in caplog.records)

    caplog.clear()
    config["base_checkpoint"] = new
    with caplog.at_level(logging.INFO, logger="talkingface"):
        assert paired_base_checkpoint(config, hr)[0] == new
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and old in warnings[0] and new in warnings[0]

    config["base_checkpoint"] = None
    with open(old, "ab") as f:     # overwritten since: not the Base the decoder learned from
        f.write(b"x")
    with pytest.raises(CheckpointError, match="is gone or was overwritten: pass --base_checkpoint"):
        paired_base_checkpoint(config, hr)


def test_hr_data_is_kept_per_base_checkpoint(tmp_path, caplog):
    from talkingface.data.dataprocess.hyperlipshr_process import HyperLipsHRPreprocessor, hr_root
    from talkingface.utils.checkpoint import checkpoint_path
    root = tmp_path / "checkpoints"
    torch.manual_seed(0)
    old = _save(checkpoint_path(str(root / "demo" / "HyperLipsBase"), 1), "HyperLipsBase")
    values = {"checkpoint_root": str(root), "preprocessed_root": str(tmp_path / "pre"), "device": "cpu"}
    config = Config(model="HyperLipsHR", dataset="demo", config_dict=values)
    old_folder = hr_root(config)
    os.makedirs(old_folder)
    torch.manual_seed(1)
    new = _save(checkpoint_path(str(root / "demo" / "HyperLipsBase"), 2), "HyperLipsBase")
    assert hr_root(config) != old_folder and hr_root(config, old) == old_folder
    assert os.path.dirname(hr_root(config)) == str(tmp_path / "pre" / "hr_128")

    with caplog.at_level(logging.INFO, logger="talkingface"):
        HyperLipsHRPreprocessor(config)._other_bases()
    assert os.path.isdir(old_folder) and "hr_prune_other_bases=true deletes it" in caplog.text
    HyperLipsHRPreprocessor(Config(model="HyperLipsHR", dataset="demo", config_dict=dict(
        values, hr_prune_other_bases=True)))._other_bases()
    assert not os.path.exists(old_folder)
    assert new
