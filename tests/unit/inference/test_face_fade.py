"""face_fade_frames (talkingface/inference/render.py face_weights): next to frames without a face the
lip-synced mouth crossfades to the source frame instead of jumping; frames far from a gap, and
videos without gaps, are bit-identical to face_fade_frames=0; at a run boundary the mouth changes by
one fade step at most (with face_fade_frames=0: the whole difference, the pop). Random-init Base
weights: the point is which frames are blended with what, not quality."""
import numpy as np
import pytest

from talkingface.inference.render import face_weights
from talkingface.utils.audio import load_audio

GAP = (6, 9)  # source frames 6, 7, 8 are blank: no face
RUN = dict(infer_bf16=False, infer_batch_size=4, face_max_gap=0)  # face_max_gap=0: the gap stays a gap


@pytest.fixture(scope="module")
def media(lipsync_media):
    from talkingface.utils.video import read_frames
    faces = read_frames(lipsync_media["video"], fps=25)[:15]
    gapped = [f.copy() for f in faces]
    for i in range(*GAP):
        gapped[i] = np.zeros_like(faces[i])
    # 0.8 s of audio: 20 output frames, so the 15 source frames loop ping-pong (0..14, 13..9)
    return {"faces": faces, "gapped": gapped, "wav": load_audio(lipsync_media["audio"])}


@pytest.fixture(scope="module")
def lipsync(random_base_checkpoint):
    from talkingface.api import LipSync
    return LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")


@pytest.fixture(scope="module")
def gapped_runs(lipsync, media):
    """(result with face_fade_frames=3, frames with face_fade_frames=0) over the gapped video."""
    faded = lipsync.run(media["gapped"], media["wav"], face_fade_frames=3, **RUN)
    jumped = lipsync.run(media["gapped"], media["wav"], face_fade_frames=0, **RUN)
    return faded, jumped.frames


def _sources(n_src, n_out):
    """The source frame of each output frame (ping-pong)."""
    cycle = list(range(n_src)) + list(range(n_src - 2, 0, -1))
    return [cycle[k % len(cycle)] for k in range(n_out)]


def test_face_weights_ramp_by_source_frame():
    nan = [np.nan] * 4
    boxes = np.array([[0, 0, 9, 9]] * 3 + [nan] * 2 + [[0, 0, 9, 9]] * 6, np.float32)
    assert face_weights(boxes, 3).tolist() == pytest.approx([0.75, 0.5, 0.25, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1])
    assert face_weights(boxes, 0) is None                       # 0: the old jump
    assert face_weights(boxes[:3], 3) is None                   # no gap: nothing to fade
    assert face_weights(np.array([nan] * 3, np.float32), 3) is None  # no face at all


def test_crossfade_beside_a_gap(gapped_runs, media):
    faded, jumped = gapped_runs
    out, boxes, gapped = faded.frames, faded.boxes, media["gapped"]
    present = np.isfinite(boxes).all(axis=1)
    assert present.tolist() == [not GAP[0] <= i < GAP[1] for i in range(15)]  # the gap is where it was put
    weights = face_weights(boxes, 3)
    sources = _sources(len(boxes), len(out))
    assert len(out) == 20
    seen = set()
    for k, src in enumerate(sources):
        source, w = gapped[src], weights[src]
        if not present[src]:  # gap frames: the source frame
            assert np.array_equal(out[k], source) and np.array_equal(jumped[k], source), k
            seen.add("gap")
        elif w == 1:  # well inside a face run: as face_fade_frames=0, bit for bit
            assert np.array_equal(out[k], jumped[k]), k
            seen.add("inside")
        else:  # beside the gap: strictly between the generated and the source frame
            diff = np.abs(out[k].astype(int) - source).mean()
            unfaded = np.abs(jumped[k].astype(int) - source).mean()
            assert 0 < diff < unfaded, (k, diff, unfaded)
            seen.add("fade")
    assert seen == {"gap", "inside", "fade"}
    assert sorted({float(weights[s]) for s in sources}) == [0, 0.25, 0.5, 0.75, 1]


def test_no_gap_is_identical_to_no_fade(lipsync, media):
    faded = lipsync.run(media["faces"], media["wav"], face_fade_frames=3, **RUN)
    assert np.isfinite(faded.boxes).all()
    jumped = lipsync.run(media["faces"], media["wav"], face_fade_frames=0, **RUN).frames
    assert len(faded.frames) == len(jumped) == 20
    assert all(np.array_equal(a, b) for a, b in zip(faded.frames, jumped))


def test_stream_equals_batch_with_a_gap(lipsync, media, gapped_runs):
    batch = gapped_runs[0].frames
    wav = media["wav"]
    stream = lipsync.stream(media["gapped"], face_fade_frames=3, **RUN)
    frames, pos = [], 0
    for size in (3000, 641, 5000):  # uneven chunks
        frames += list(stream.push(wav[pos:pos + size]))
        pos += size
    frames += list(stream.push(wav[pos:]))
    frames += stream.close()
    assert len(frames) == len(batch) and all(np.array_equal(a, b) for a, b in zip(frames, batch))


FADE = 3  # face_fade_frames of gapped_runs' first run


def _mouth(frame, box):
    """The lower half of the face box: the mouth region the paste changes."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return frame[(y1 + y2) // 2:y2, x1:x2].astype(int)


def _boundary_changes(frames, gapped, boxes, sources):
    """Per run boundary (an output frame with a face next to one without): the largest frame-to-frame
    change of the mouth region that the lip-sync adds, and the largest generated-vs-source difference
    there. The source itself changes at the boundary (here from a face to a blank frame), so the
    change is measured on the residual output - source, which is all the lip-sync puts on the frame."""
    present = np.isfinite(boxes).all(axis=1)
    changes = []
    for k in range(1, len(frames)):
        a, b = sources[k - 1], sources[k]
        if present[a] == present[b]:
            continue
        face = a if present[a] else b  # the face frame beside the gap: its box is the mouth region
        before = _mouth(frames[k - 1], boxes[face]) - _mouth(gapped[a], boxes[face])
        after = _mouth(frames[k], boxes[face]) - _mouth(gapped[b], boxes[face])
        changes.append((k, int(np.abs(after - before).max())))
    return changes


def test_run_boundary_changes_the_mouth_by_one_fade_step_at_most(gapped_runs, media):
    faded, jumped = gapped_runs
    gapped, boxes = media["gapped"], faded.boxes
    sources = _sources(len(boxes), len(faded.frames))
    faded_changes = _boundary_changes(faded.frames, gapped, boxes, sources)
    popped_changes = _boundary_changes(jumped, gapped, boxes, sources)
    assert [k for k, _ in faded_changes] == [6, 9]  # into the gap (source 5 -> 6), out of it (8 -> 9)
    for (k, change), (_, pop) in zip(faded_changes, popped_changes):
        face = sources[k - 1] if np.isfinite(boxes[sources[k - 1]]).all() else sources[k]
        edge = k - 1 if face == sources[k - 1] else k
        # face_fade_frames=0 pastes the generated mouth whole: its difference from the source
        difference = int(np.abs(_mouth(jumped[edge], boxes[face]) - _mouth(gapped[face], boxes[face])).max())
        fade_step = difference / (FADE + 1)
        assert change <= fade_step + 1, (k, change, fade_step)  # + 1: the blend rounds to uint8
        assert pop == difference > fade_step + 1, (k, pop, fade_step)  # without the fade: the pop
