"""Inference computes only the pasted rectangle of each generated face (render.LipSyncRenderer
._pasted_rect -> model.generate.generate_faces(region=)): the output frames are those of the
whole-face computation, for Base and HR, in fp32 and bf16. Random-init weights on a 4-frame
480x270 clip with 0.36 s of audio (9 frames, the video looping ping-pong)."""
import numpy as np
import pytest
import torch

from talkingface.inference import pipeline, render
from talkingface.utils.video import read_frames


@pytest.fixture
def clip(four_frame_clip):
    return four_frame_clip


def _syncer(model, checkpoints, **settings):
    from talkingface.config import Config
    return pipeline.LipSyncer(Config(model=model, dataset="demo", config_dict=dict(
        mode="infer", device="cpu", infer_batch_size=3, **checkpoints, **settings))).load()


def _runs(syncer, clip, monkeypatch):
    """(frames with the pasted region only, frames with whole faces, the rectangles computed)."""
    rects = []
    real = render.generate_faces
    monkeypatch.setattr(render, "generate_faces", lambda *a, **k: rects.append(k["region"]) or real(*a, **k))
    region = syncer.run(*clip).frames
    monkeypatch.setattr(render.LipSyncRenderer, "pasted_region_only", False)
    whole = syncer.run(*clip).frames
    return region, whole, rects


def _check(region, whole, rects, size, source):
    assert len(region) == len(whole) == 9
    # Bit for bit: a pixel missing from the rectangle sits where the paste weight is small, so it
    # shows as 1 level at most and a tolerance would hide it. (A conv run on a window may round a
    # last float bit differently from the whole map, fp32 max 6e-8: not on these frames.)
    for a, b in zip(region, whole):
        assert np.array_equal(a, b)
    # the region path ran (a part of each face) and the frames were lip-synced, so equal means something
    computed = [r for r in rects if r is not None]
    assert computed and all((r.bottom - r.top) * (r.right - r.left) < size * size / 2 for r in computed)
    assert any(np.abs(frame.astype(int) - source[0]).max() > 8 for frame in region[:1])


@pytest.mark.parametrize("bf16", [False, True])
def test_base_frames_with_the_pasted_region_only_are_the_whole_face_frames(random_base_checkpoint, clip, bf16,
                                                                          monkeypatch):
    syncer = _syncer("HyperLipsBase", dict(checkpoint=random_base_checkpoint["path"]), infer_bf16=bf16)
    _check(*_runs(syncer, clip, monkeypatch), 128, read_frames(clip[0]))


@pytest.mark.parametrize("bf16", [False, True])
def test_hr_frames_with_the_pasted_region_only_are_the_whole_face_frames(random_base_checkpoint, clip, bf16,
                                                                        tmp_path, monkeypatch):
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import save_checkpoint_file
    torch.manual_seed(1)
    hr_path = str(tmp_path / "hr.pth")
    save_checkpoint_file({"state_dict": build_network("HRDecoder", 2).state_dict()}, hr_path)
    syncer = _syncer("HyperLipsHR", dict(checkpoint=hr_path, base_checkpoint=random_base_checkpoint["path"]),
                     infer_bf16=bf16)
    _check(*_runs(syncer, clip, monkeypatch), 256, read_frames(clip[0]))
