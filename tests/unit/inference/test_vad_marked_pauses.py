"""The voice-activity detector of silence_mode (talkingface/inference/silence.py: FrameVad, then
speech_frames) against pauses marked by hand in real speech (tests/data/video2_drive_pauses.txt,
how they were marked is written there).

The rule: every marked pause is found as one run of non-speech VAD windows whose start and end are
each within 80 ms of the marks; inside marked speech the VAD may report only pauses shorter than
silence_min_ms (300 ms, the shortest pause silence_mode=source acts on; rest acts on none of them
either, see test_frames_follow_the_marks); and the per-frame decision silence_mode uses calls
silent the frames whose mel window lies wholly in a marked pause, speech those whose window lies
wholly in marked speech.
"""

import numpy as np
import pytest

from talkingface.inference.silence import WINDOW, FrameVad, speech_frames
from talkingface.utils.audio import HOP_SIZE, MEL_CHUNK_LENGTH, SAMPLE_RATE, WIN_SIZE, load_audio, mel_start
from paths import TEST_DATA

MARKS = TEST_DATA / "video2_drive_pauses.txt"
TOLERANCE_S = 0.080
SILENCE_MIN_S = 0.300  # overall.yaml silence_min_ms


def _marked_pauses():
    lines = [line.split("#")[0].split() for line in MARKS.read_text().splitlines()]
    return [(float(start), float(end)) for start, end in (line for line in lines if line)]


@pytest.fixture(scope="module")
def wav(samples_dir):
    return load_audio(str(samples_dir / "video2_drive.wav"))


def _vad_pauses(windows):
    """(start, end) in seconds of each run of non-speech windows."""
    pauses, k = [], 0
    while k < len(windows):
        if windows[k]:
            k += 1
            continue
        end = k
        while end < len(windows) and not windows[end]:
            end += 1
        pauses.append((k * WINDOW / SAMPLE_RATE, end * WINDOW / SAMPLE_RATE))
        k = end
    return pauses


def _overlaps(a, b):
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.parametrize("detector", ["auto", "energy"])
def test_vad_finds_the_marked_pauses_within_80_ms(wav, detector):
    vad = FrameVad(detector)
    vad.push(wav)
    found = _vad_pauses(vad.windows)
    marked = _marked_pauses()
    for pause in marked:
        matches = [p for p in found if _overlaps(p, pause)]
        assert len(matches) == 1, (pause, matches)
        errors = np.abs(np.subtract(matches[0], pause))
        assert (errors <= TOLERANCE_S).all(), (detector, pause, matches[0], errors)
    extra = [p for p in found if not any(_overlaps(p, pause) for pause in marked)]
    assert all(end - start < SILENCE_MIN_S for start, end in extra), extra


def _mel_window_seconds(k):
    """The samples output frame k's mel chunk depends on, in seconds (silence.FrameVad.speech)."""
    s = mel_start(k)
    first = max(0, s * HOP_SIZE - WIN_SIZE // 2)
    return first / SAMPLE_RATE, ((s + MEL_CHUNK_LENGTH - 1) * HOP_SIZE + WIN_SIZE // 2) / SAMPLE_RATE


def test_frames_follow_the_marks(wav):
    n = len(wav) * 25 // SAMPLE_RATE
    mask = speech_frames(wav, n)
    marked = _marked_pauses()
    # the mel windows of the last frames are right-aligned over the end: keep to the full ones
    frames = [k for k in range(n) if _mel_window_seconds(k)[1] <= len(wav) / SAMPLE_RATE]
    silent = [k for k in frames if any(a <= _mel_window_seconds(k)[0] and _mel_window_seconds(k)[1] <= b
                                       for a, b in marked)]
    speech = [k for k in frames if not any(_overlaps(_mel_window_seconds(k), pause) for pause in marked)]
    assert len(silent) >= 10 and len(speech) >= 100  # the check has something to check
    assert not mask[silent].any(), [k for k in silent if mask[k]]
    assert mask[speech].all(), [k for k in speech if not mask[k]]
