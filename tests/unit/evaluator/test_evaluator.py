"""Metrics of the evaluator: PSNR/SSIM, LMD, the sync offset search, missing-weight messages."""
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from talkingface.config.configurator import PROPERTIES_DIR, load_yaml
from talkingface.evaluator import metrics as M
from talkingface.model.av_sync import shift_audio, sync_scores

FPS, SR = 25, 16000


@pytest.fixture
def config(tmp_path):
    """overall.yaml defaults (what the scorer CLI uses), on the CPU, with no weights anywhere."""
    cfg = load_yaml(os.path.join(PROPERTIES_DIR, "overall.yaml"))
    cfg.update(device="cpu", dataset="demo", checkpoint_root=str(tmp_path / "checkpoints"),
               syncnet_v2_path=str(tmp_path / "nowhere" / "syncnet_v2.model"),
               inception_path=str(tmp_path / "nowhere" / "inception.pth"), sync_expert_path=None)
    return cfg


@pytest.fixture
def metric_log():
    """Records of the metrics logger (the 'talkingface' tree does not propagate to caplog)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger(M.__name__)
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(old_level)


def _frames(seed, n=4, size=64):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


# --- PSNR / SSIM ---------------------------------------------------------------------------------

def test_psnr_ssim_identical_frames_are_inf_and_one(config):
    frames = _frames(0)
    sample = M.EvalSample("same", frames, frames.copy())
    assert M.PSNR(config).compute(sample)["PSNR"] == float("inf")
    assert M.SSIM(config).compute(sample)["SSIM"] == 1.0


def test_psnr_ssim_of_different_frames_are_finite_and_ordered(config):
    real = _frames(1)
    rng = np.random.default_rng(2)
    slightly = np.clip(real.astype(int) + rng.integers(-5, 6, real.shape), 0, 255).astype(np.uint8)
    heavily = np.clip(real.astype(int) + rng.integers(-60, 61, real.shape), 0, 255).astype(np.uint8)
    psnr, ssim = M.PSNR(config), M.SSIM(config)
    p1, p2 = (psnr.compute(M.EvalSample("x", g, real))["PSNR"] for g in (slightly, heavily))
    s1, s2 = (ssim.compute(M.EvalSample("x", g, real))["SSIM"] for g in (slightly, heavily))
    assert np.isfinite(p1) and np.isfinite(p2) and p1 > p2 > 0
    assert 1.0 > s1 > s2
    # MSE of +-5 uniform noise is about 10: PSNR near 10*log10(255^2/10) = 38 dB.
    assert 36 < p1 < 40


def test_ssim_matches_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure
    real = _frames(3, n=3, size=48)
    gen = np.stack([cv2.GaussianBlur(f, (5, 5), 1.2) for f in real])
    expected = structural_similarity_index_measure(
        torch.from_numpy(gen).permute(0, 3, 1, 2).double(), torch.from_numpy(real).permute(0, 3, 1, 2).double(),
        data_range=255.0, reduction="none").numpy()
    np.testing.assert_allclose(M.ssim_frames(gen, real), expected, atol=1e-9)


# --- sync offset search --------------------------------------------------------------------------

def _embeddings_with_delay(delay, n=80, dim=16, seed=0):
    """Video window i shows content s[i]; audio window j carries content s[j - delay]."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n + 2 * abs(delay), dim))
    video = content[abs(delay):abs(delay) + n]
    audio = content[abs(delay) - delay:abs(delay) - delay + n]
    return torch.tensor(video), torch.tensor(audio)


@pytest.mark.parametrize("zero_pad", [True, False])
def test_offset_search_finds_known_delay(zero_pad):
    aligned = sync_scores(*_embeddings_with_delay(0), vshift=15, zero_pad=zero_pad)
    delayed = sync_scores(*_embeddings_with_delay(7), vshift=15, zero_pad=zero_pad)
    assert aligned.offset == 0 and aligned.min_distance == pytest.approx(0, abs=1e-5)
    assert delayed.offset == -7          # official sign: audio late by 7 frames -> offset -7
    assert delayed.distance_at_zero > aligned.distance_at_zero + 1
    assert aligned.confidence > 1 and aligned.confidence_at_zero == pytest.approx(aligned.confidence)
    assert delayed.confidence_at_zero < 0 < delayed.confidence


class LoudnessExpert(nn.Module):
    """A constructed 'expert': video embedding = brightness of the 5 lower halves, audio embedding =
    level of the tone in the 5 frame-long parts of the mel chunk, both centred and L2-normalised."""

    def forward(self, audio, face):
        cols = [0, 3, 6, 10, 13, 16]   # 16 mel columns = 5 frames of 3.2 columns
        peak = audio[:, 0].amax(1)     # loudest mel bin of every column: the tone's level
        a = torch.stack([peak[:, cols[t]:cols[t + 1]].mean(1) for t in range(5)], 1)
        v = face.reshape(len(face), 5, 3, -1).mean((2, 3))
        norm = lambda x: nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1)
        return norm(a), norm(v)


def _loudness_clip(n_frames=60, seed=0):
    """Frames whose mouth half brightens with the audio's loudness, frame by frame."""
    rng = np.random.default_rng(seed)
    loudness = rng.uniform(0.02, 1.0, n_frames)
    t = np.arange(n_frames * SR // FPS) / SR
    envelope = np.convolve(np.repeat(loudness, SR // FPS), np.hanning(161) / np.hanning(161).sum(), "same")
    wav = (0.3 * np.sin(2 * np.pi * 1000 * t) * envelope).astype(np.float32)   # smooth: no clicks
    frames = np.full((n_frames, 128, 128, 3), 90, np.uint8)
    frames[:, 64:] = (40 + 200 * loudness)[:, None, None, None].astype(np.uint8)
    return frames, wav


def test_syncscore_shifted_audio_scores_worse(config):
    frames, wav = _loudness_clip()
    metric = M.SyncScore(config, network=LoudnessExpert())
    aligned = metric.compute(M.EvalSample("aligned", frames, frames, wav))
    shifted = metric.compute(M.EvalSample("shifted", frames, frames, shift_audio(wav, 10)))
    assert aligned["SyncScore-offset"] == 0
    assert abs(shifted["SyncScore-offset"] + 10) <= 1
    assert shifted["SyncScore-D@0"] > aligned["SyncScore-D@0"] + 0.3
    assert aligned["SyncScore-C@0"] == aligned["SyncScore-C"] > 0.3
    assert shifted["SyncScore-C@0"] < aligned["SyncScore-C@0"] - 0.3
    # shifted past the search range, even the best-offset numbers fall
    far = metric.compute(M.EvalSample("far", frames, frames, shift_audio(wav, 20)))
    assert far["SyncScore-C"] < aligned["SyncScore-C"] and far["SyncScore-D"] > aligned["SyncScore-D"]


def test_syncscore_and_lse_run_with_real_network_shapes(config, tmp_path):
    """End-to-end smoke: untrained expert and syncnet_v2 (loaded from an official-style file)."""
    from talkingface.model.syncnet_v2 import SyncNetV2
    from talkingface.model.audio_driven_talkingface.syncnet import SyncNet

    torch.manual_seed(0)
    frames, wav = _loudness_clip(n_frames=8)      # 4 expert windows, 3 official LSE windows
    sample = M.EvalSample("smoke", frames, frames, wav)
    values = M.SyncScore(config, network=SyncNet()).compute(sample)
    assert set(values) == {"SyncScore-C", "SyncScore-D", "SyncScore-offset", "SyncScore-D@0", "SyncScore-C@0"}
    assert all(np.isfinite(v) for v in values.values())
    path = tmp_path / "syncnet_v2.model"
    torch.save({"__S__." + k: v for k, v in SyncNetV2().state_dict().items()}, path)
    config["syncnet_v2_path"] = str(path)
    metric = M.LSE(config)
    values = metric.compute(sample)
    assert set(values) == {"LSE-C", "LSE-D", "LSE-offset", "LSE-D@0", "LSE-C@0"}
    assert np.isfinite(values["LSE-C"]) and values["LSE-D"] > 0 and values["LSE-offset"] in range(-15, 16)

    # LSE's own procedure (official windows, MFCC at 100 Hz, zero-padded offset search) finds a
    # known offset: a constructed network in place of the official weights, on audio delayed by 10 frames
    metric.net = LoudnessSyncNetV2()
    frames, wav = _loudness_clip()
    aligned = metric.compute(M.EvalSample("aligned", frames, frames, wav))
    shifted = metric.compute(M.EvalSample("shifted", frames, frames, shift_audio(wav, 10)))
    assert aligned["LSE-offset"] == 0
    assert abs(shifted["LSE-offset"] + 10) <= 1
    assert shifted["LSE-C@0"] < aligned["LSE-C@0"]


class LoudnessSyncNetV2(nn.Module):
    """syncnet_v2's interface, constructed: lips = brightness of the 5 lower halves (N,3,5,224,224),
    audio = log energy (MFCC coefficient 0) of the 5 frame-long parts of the 20 MFCC columns;
    both centred and L2-normalised."""

    @staticmethod
    def _norm(x):
        return nn.functional.normalize(x - x.mean(1, keepdim=True), dim=1)

    def forward_lip(self, x):
        return self._norm(x[:, :, :, 112:].mean((1, 3, 4)))

    def forward_aud(self, x):
        return self._norm(x[:, 0, 0].reshape(len(x), 5, 4).mean(2))


def test_syncnet_mfcc_matches_python_speech_features():
    """Reference values: python_speech_features 0.6 `mfcc(int16_audio, 16000)` (what syncnet_python
    calls), coefficients 0-3 of feature frames 0, 20 and 48 of this half-second signal."""
    from talkingface.model.mfcc import syncnet_mfcc
    t = np.arange(8000) / SR
    wav = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.1 * np.sin(2 * np.pi * 2500 * t) * np.linspace(0, 1, 8000)
    int16 = np.round(wav * 32767).astype(np.int16)
    mfcc = syncnet_mfcc(int16.astype(np.float32) / 32768.0)
    assert mfcc.shape == (13, 49)     # 1 + ceil((8000 - 400) / 160) frames at 100 Hz
    expected = [[18.747567, 19.539259, 20.528196], [19.209635, 9.849065, 4.902507],
                [6.386027, -2.936161, -9.150547], [5.618838, 28.863845, 34.91611]]
    np.testing.assert_allclose(mfcc[:4, [0, 20, 48]], expected, atol=1e-4)


# --- LMD -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_crop(samples_dir):
    from talkingface.utils.face import FaceDetector, crop_resize, pad_box
    from talkingface.utils.video import iter_frames
    frame = next(iter_frames(samples_dir / "video1.mp4"))
    with FaceDetector() as detector:
        box = detector.detect(frame)[0]
    return crop_resize(frame, pad_box(box, 10, frame.shape[1], frame.shape[0]), 256)


def _open_mouth(crop, strength):
    """Stretch the mouth region vertically around its centre (cv2.remap)."""
    from talkingface.utils.face import FaceMesh
    with FaceMesh() as mesh:
        lips = mesh.landmarks(crop)[M.lip_landmark_indices()]
    cx, cy = lips.mean(0)
    radius = 1.6 * (lips[:, 0].max() - lips[:, 0].min()) / 2
    ys, xs = np.mgrid[0:crop.shape[0], 0:crop.shape[1]].astype(np.float32)
    weight = np.clip(1 - np.hypot(xs - cx, ys - cy) / radius, 0, 1) ** 2
    map_y = ys - strength * weight * (ys - cy)
    return cv2.remap(crop, xs, map_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def test_lmd_zero_for_same_frame_and_grows_with_warp(config, face_crop):
    lmd = M.LMD(config)
    same = lmd.compute(M.EvalSample("same", face_crop[None], face_crop[None]))
    assert same == {"LMD": 0.0, "LMD-frames": 1, "LMD-skipped": 0}
    small = lmd.compute(M.EvalSample("small", _open_mouth(face_crop, 0.25)[None], face_crop[None]))["LMD"]
    large = lmd.compute(M.EvalSample("large", _open_mouth(face_crop, 0.5)[None], face_crop[None]))["LMD"]
    lmd.finish()
    assert 0.002 < small < large


def test_lmd_skips_and_counts_frames_without_face(config, face_crop):
    blank = np.zeros_like(face_crop)
    values = M.LMD(config).compute(M.EvalSample("x", np.stack([face_crop, blank]), np.stack([face_crop, face_crop])))
    assert values == {"LMD": 0.0, "LMD-frames": 1, "LMD-skipped": 1}


# --- LipJitter ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def face_crops(samples_dir):
    """12 consecutive real face crops (256 px) of a sample clip and their lip landmarks."""
    from talkingface.utils.face import FaceDetector, FaceMesh, crop_resize, pad_box
    from talkingface.utils.video import iter_frames
    frames = []
    for frame in iter_frames(samples_dir / "video2.mp4"):
        frames.append(frame)
        if len(frames) == 12:
            break
    with FaceDetector() as detector:
        box = pad_box(detector.detect(frames[0])[0], 10, frames[0].shape[1], frames[0].shape[0])
    crops = np.stack([crop_resize(f, box, 256) for f in frames])    # one box: the real motion stays
    with FaceMesh() as mesh:
        lips = [mesh.landmarks(c)[M.lip_landmark_indices()] for c in crops]
    return crops, lips


def _move_mouth(crop, lips, dy):
    """Shift the mouth region of a crop by dy pixels (smooth fall-off around the lips)."""
    cx, cy = lips.mean(0)
    radius = 1.3 * (lips[:, 0].max() - lips[:, 0].min()) / 2
    ys, xs = np.mgrid[0:crop.shape[0], 0:crop.shape[1]].astype(np.float32)
    weight = np.clip(1.5 - np.hypot(xs - cx, ys - cy) / radius, 0, 1)
    return cv2.remap(crop, xs, (ys - dy * weight).astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT)


def test_lip_jitter_is_zero_for_a_real_clip_and_grows_with_mouth_jitter(config, face_crops):
    crops, lips = face_crops
    jitter = M.LipJitter(config)
    same = jitter.compute(M.EvalSample("same", crops, crops.copy()))
    assert same == {"LipJitter": 0.0, "LipJitter-pairs": len(crops) - 1}
    offsets = np.where(np.arange(len(crops)) % 2, -4.0, 4.0)                 # per-frame shake
    shaken = np.stack([_move_mouth(c, l, dy) for c, l, dy in zip(crops, lips, offsets)])
    steady = np.stack([_move_mouth(c, l, 4.0) for c, l in zip(crops, lips)])  # same shift every frame
    shaken_value = jitter.compute(M.EvalSample("shaken", shaken, crops))["LipJitter"]
    steady_sample = M.EvalSample("steady", steady, crops)
    steady_value = jitter.compute(steady_sample)["LipJitter"]
    lmd = M.LMD(config).compute(steady_sample)["LMD"]      # reuses the sample's landmarks
    jitter.finish()
    assert shaken_value > 0.01                     # > 2.5 px per frame at 256 px
    assert shaken_value > 3 * steady_value         # jitter, not position, is what it measures
    assert lmd > 2 * steady_value                  # while LMD sees the constant offset


def test_lip_velocity_difference_by_hand():
    still = [np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))]
    moving = [np.zeros((2, 2)), np.full((2, 2), 3.0), None]     # frame 2: no mesh, pair 1-2 skipped
    assert M.lip_velocity_difference(moving, still, crop_side=100) == [pytest.approx(np.hypot(3, 3) / 100)]
    assert M.lip_velocity_difference(still, still, 100) == [0.0, 0.0]


# --- LSE crop geometry ---------------------------------------------------------------------------

def test_syncnet_crop_matches_hand_computed_bounds():
    from talkingface.model.syncnet_v2 import syncnet_crop
    frame = np.random.default_rng(3).integers(0, 256, (200, 300, 3)).astype(np.uint8)
    # box x 100..160, y 50..130: half size 40, centre (130, 90); context 0.4:
    # rows 90-40 = 50 .. 90+40*1.8 = 162, columns 130-40*1.4 = 74 .. 186
    crop = syncnet_crop(frame, 130.0, 90.0, 40.0)
    np.testing.assert_array_equal(crop, cv2.resize(frame[50:162, 74:186], (224, 224)))
    # near the top-left corner the crop reaches past the frame: those pixels are grey 110
    corner = syncnet_crop(frame, 20.0, 20.0, 40.0)    # rows -20..92, columns -36..76
    expected = np.full((112, 112, 3), 110, np.uint8)
    expected[20:, 36:] = frame[0:92, 0:76]
    np.testing.assert_array_equal(corner, cv2.resize(expected, (224, 224)))


def test_syncnet_crop_geometry_median_filters_boxes():
    from talkingface.model.syncnet_v2 import syncnet_crop_geometry
    boxes = np.tile([100.0, 50.0, 160.0, 130.0], (30, 1))
    boxes[15] += [40, 40, 40, 40]                         # one jumpy detection
    centre_x, centre_y, half = syncnet_crop_geometry(boxes)
    np.testing.assert_array_equal(centre_x[6:24], 130.0)  # the outlier is gone
    np.testing.assert_array_equal(centre_y[6:24], 90.0)
    np.testing.assert_array_equal(half, 40.0)             # 6 zeros of padding never win a median of 13


# --- missing weights -----------------------------------------------------------------------------

def test_missing_weights_give_one_line_and_fallback(config, metric_log):
    metrics, skipped = M.build_metrics(config, ["PSNR", "LSE", "FID"])
    assert [m.name for m in metrics] == ["PSNR"]
    assert set(skipped) == {"LSE", "FID", "SyncScore"}     # SyncScore tried as LSE's stand-in
    warnings = [r.getMessage() for r in metric_log if r.levelno >= logging.WARNING]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    about_lse = [r.getMessage() for r in metric_log if "LSE" in r.getMessage()]
    assert len(about_lse) == 1 and about_lse[0].startswith("LSE is off")      # ONE line, at any level
    assert config["syncnet_v2_path"] in about_lse[0] and "SyncScore" in about_lse[0]
    assert any(w.startswith("FID is off") and config["inception_path"] in w for w in warnings)
    assert any(w.startswith("SyncScore is off") and "SyncNet" in w for w in warnings)


def test_syncscore_finds_latest_expert_checkpoint(config, metric_log):
    from talkingface.model.audio_driven_talkingface.syncnet import SyncNet
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file
    folder = os.path.join(config["checkpoint_root"], "demo", "SyncNet")
    save_checkpoint_file({"state_dict": SyncNet().state_dict()}, checkpoint_path(folder, 5))
    metric = M.SyncScore(config)
    assert metric.skip_reason is None and metric.net is not None
    assert any(checkpoint_path(folder, 5) in r.getMessage() for r in metric_log)


# --- FID -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_a,n_b,dim", [(10, 14, 32), (200, 150, 16)])
def test_frechet_distance_matches_scipy_sqrtm(n_a, n_b, dim):
    from scipy import linalg
    from talkingface.evaluator.inception import frechet_distance
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n_a, dim)), rng.normal(size=(n_b, dim)) * 1.3 + 0.2
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_fid_inception_layout():
    """The pure-torch network has pytorch-fid's 2048-d output and torchvision's key layout."""
    from talkingface.evaluator.inception import FIDInceptionV3
    net = FIDInceptionV3().eval()
    keys = net.state_dict()
    assert keys["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert keys["fc.weight"].shape == (1008, 2048)
    assert sum(p.numel() for p in net.parameters()) == 23_850_960


def test_offset_search_without_padding_ignores_offsets_with_few_pairs():
    video, audio = _embeddings_with_delay(0, n=10)
    result = sync_scores(video, audio, vshift=15, zero_pad=False)
    finite = np.flatnonzero(np.isfinite(result.mean_distances)) - 15
    assert finite.min() == -5 and finite.max() == 5 and result.offset == 0


def test_sync_metric_gives_no_value_for_a_too_short_clip(config):
    frames, wav = _loudness_clip(n_frames=4)
    values = M.SyncScore(config, network=LoudnessExpert()).compute(M.EvalSample("short", frames, frames, wav))
    assert values["SyncScore-C"] is None and values["SyncScore-D"] is None


def test_weight_files_load_or_fail_in_one_line(tmp_path):
    """pytorch-fid state dict and syncnet_v2 state dict load; a foreign file is a one-line error."""
    from talkingface.evaluator.inception import FIDInceptionV3, load_fid_inception
    from talkingface.model.syncnet_v2 import load_syncnet_v2
    from talkingface.utils.errors import CheckpointError

    fid_path, wrong_path = tmp_path / "pt_inception.pth", tmp_path / "wrong.pth"
    state = {k: v for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, fid_path)
    assert isinstance(load_fid_inception(str(fid_path), torch.device("cpu")), FIDInceptionV3)
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong_path)
    for loader in (load_fid_inception, load_syncnet_v2):
        with pytest.raises(CheckpointError) as error:
            loader(str(wrong_path), torch.device("cpu"))
        assert "\n" not in str(error.value) and "wrong.pth" in str(error.value)
