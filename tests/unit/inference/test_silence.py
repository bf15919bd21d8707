"""silence_mode (talkingface/inference/silence.py): the voice-activity decision per frame, `rest`
(silent frames get the mel of digital silence), `source` (long pauses show the source frames, with
a crossfade), stream = batch. Random-init Base weights on a still image: the point is which frames
are generated from what, not quality."""
import cv2
import numpy as np
import pytest

from talkingface.inference.silence import source_weights, speech_frames
from talkingface.utils.audio import load_audio
from talkingface.utils.errors import ConfigError

PAUSE = int(0.6 * 16000)
SPEECH = int(0.4 * 16000)


def _pauses():
    rng = np.random.default_rng(0)
    t = np.arange(PAUSE) / 16000
    return {"digital": np.zeros(PAUSE, np.float32),
            "noise": rng.normal(0, 0.003, PAUSE).astype(np.float32),  # quiet room noise (~-50 dBFS)
            "hum": (0.004 * np.sin(2 * np.pi * 50 * t) + rng.normal(0, 0.001, PAUSE)).astype(np.float32)}


@pytest.fixture(scope="module")
def audio(lipsync_media):
    """speech | digital silence | speech | noise | speech | hum | speech, and each pause's frames."""
    speech = load_audio(lipsync_media["audio"])[:SPEECH]
    pieces, spans, pos = [speech], {}, SPEECH
    for name, pause in _pauses().items():
        spans[name] = (pos, pos + PAUSE)
        pieces += [pause, speech]
        pos += PAUSE + SPEECH
    return np.concatenate(pieces).astype(np.float32), spans


@pytest.fixture(scope="module")
def still(lipsync_media, tmp_path_factory):
    from talkingface.utils.video import read_frames
    path = str(tmp_path_factory.mktemp("silence") / "still.png")
    cv2.imwrite(path, read_frames(lipsync_media["video"], fps=25)[0])
    return path


@pytest.fixture(scope="module")
def lipsync(random_base_checkpoint):
    from talkingface.api import LipSync
    return LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu",
                   infer_bf16=False, infer_batch_size=8)  # 85 frames: 11 network calls, not 85


@pytest.fixture(scope="module")
def generated(lipsync, still, audio):
    """silence_mode=generate (the default) over the test audio."""
    return lipsync.run(still, audio[0]).frames


@pytest.fixture(scope="module")
def rested(lipsync, still, audio):
    """silence_mode=rest over the test audio."""
    return lipsync.run(still, audio[0], silence_mode="rest").frames


def _frames_in(span, mask):
    """Output frames whose 40 ms lie inside the sample span and that the VAD marked silent."""
    first, last = -(-span[0] // 640), span[1] // 640
    return [k for k in range(first, last) if not mask[k]]


@pytest.mark.parametrize("detector", ["auto", "energy"])
def test_vad_marks_pauses_silent_and_speech_speech(audio, detector):
    wav, spans = audio
    n = len(wav) // 640
    mask = speech_frames(wav, n, detector)
    for name, span in spans.items():  # every pause has a silent middle
        assert len(_frames_in(span, mask)) >= 5, name
    speech = [k for k in range(n) if not any(a - 640 <= 640 * k < b for a, b in spans.values())]
    assert mask[speech].all()
    assert not speech_frames(np.zeros(16000, np.float32), 25, detector).any()


def test_rest_gives_one_mouth_for_every_pause(audio, generated, rested):
    wav, spans = audio
    mask = speech_frames(wav, len(wav) // 640)
    rest, generate = rested, generated
    assert len(rest) == len(generate) == len(wav) // 640
    quiet = {name: _frames_in(span, mask) for name, span in spans.items()}
    reference = rest[quiet["digital"][0]]
    for name, ks in quiet.items():  # noise and hum give the mouth of digital silence
        assert all(np.array_equal(rest[k], reference) for k in ks), name
    assert not any(np.array_equal(rest[k], generate[k]) for k in quiet["noise"] + quiet["hum"])
    speech = [k for k in range(len(rest)) if mask[k]]
    assert all(np.array_equal(rest[k], generate[k]) for k in speech)  # speech frames as before


def test_source_shows_the_source_frames_in_long_pauses(lipsync, still, audio, generated):
    wav, _ = audio
    mask = speech_frames(wav, len(wav) // 640)
    weights = source_weights(mask, 5, 2)
    out = lipsync.run(still, wav, silence_mode="source", silence_min_ms=200, silence_fade_frames=2).frames
    generate = generated
    source = cv2.imread(still)
    assert sorted(set(np.round(weights.astype(float), 3).tolist())) == [0.0, 0.333, 0.667, 1.0]
    for k, w in enumerate(weights):
        if w == 0:
            assert np.array_equal(out[k], source), k
        elif w == 1:
            assert np.array_equal(out[k], generate[k]), k
        else:  # the crossfade: between the two, and equal to neither
            lo = np.minimum(source, generate[k]).astype(int) - 1
            hi = np.maximum(source, generate[k]).astype(int) + 1
            assert ((out[k] >= lo) & (out[k] <= hi)).all(), k
            assert not np.array_equal(out[k], source) and not np.array_equal(out[k], generate[k]), k
    assert (weights[mask] == 1).all()


def test_source_weights_ramp_and_keep_short_pauses():
    speech = np.array([1, 0, 0, 1] + [0] * 8 + [1], bool)
    assert source_weights(speech, 3, 2).tolist() == pytest.approx(
        [1, 1, 1, 1, 2 / 3, 1 / 3, 0, 0, 0, 0, 1 / 3, 2 / 3, 1])
    assert source_weights(np.zeros(4, bool), 3, 2).tolist() == [0, 0, 0, 0]  # all silent: the source


def test_stream_equals_batch_for_rest(lipsync, still, audio, rested):
    wav, _ = audio
    batch = rested
    stream = lipsync.stream(still, silence_mode="rest")
    frames, pos = [], 0
    for size in (1000, 3333, 640, 7000, 123, 20000):  # uneven chunks
        frames += list(stream.push(wav[pos:pos + size]))
        pos += size
    frames += list(stream.push(wav[pos:]))
    frames += stream.close()
    assert len(frames) == len(batch) and all(np.array_equal(a, b) for a, b in zip(frames, batch))


def test_bad_settings_are_one_line_config_errors(lipsync, still, audio):
    wav, _ = audio
    with pytest.raises(ConfigError) as error:
        lipsync.run(still, wav[:3200], silence_mode="quiet")
    assert "silence_mode" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError) as error:
        lipsync.run(still, wav[:3200], silence_mode="source", silence_min_ms=-1)
    assert "silence_min_ms" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError) as error:
        lipsync.stream(still, silence_mode="source")
    assert "batch inference only" in str(error.value) and "\n" not in str(error.value)


def test_without_silero_an_energy_threshold_with_one_log_line(audio, monkeypatch, caplog):
    import logging
    import sys

    from talkingface.inference import silence
    monkeypatch.setitem(sys.modules, "silero_vad", None)  # import fails as if not installed
    monkeypatch.setattr(silence, "_warned", False)
    wav, _ = audio
    with caplog.at_level(logging.INFO, logger="talkingface.inference.silence"):
        first = speech_frames(wav, len(wav) // 640)
        speech_frames(wav, len(wav) // 640)
    assert [r.getMessage() for r in caplog.records if "energy threshold" in r.getMessage()] == [caplog.records[0].getMessage()]
    assert len(caplog.records) == 1
    assert np.array_equal(first, speech_frames(wav, len(wav) // 640, detector="energy"))
