"""A long push() computes its mel in slices of stream.MEL_SLICE_COLUMNS columns: the columns are
those of one melspectrogram call over the whole audio, and no call sees more than a slice."""
import numpy as np

from talkingface.inference import stream as stream_module
from talkingface.inference.stream import MEL_SLICE_COLUMNS, LipSyncStream
from talkingface.utils.audio import HOP_SIZE, SAMPLE_RATE, melspectrogram


def _bare_stream():
    """A LipSyncStream with only the audio/mel state (push() without consuming its frames never
    renders, and the mel bookkeeping needs nothing else)."""
    stream = LipSyncStream.__new__(LipSyncStream)
    stream._audio, stream._start, stream._n_samples = np.zeros(0, np.float32), 0, 0
    stream._mel, stream._col0 = np.zeros((80, 0), np.float32), 0
    stream._next, stream._vad, stream.closed = 0, None, False
    stream.batch_size = 1
    stream.profiler = stream_module.OFF
    return stream


def test_a_long_push_gives_the_one_shot_mel_columns_in_bounded_slices(monkeypatch):
    wav = np.random.default_rng(0).standard_normal(25 * SAMPLE_RATE + 123).astype(np.float32) * 0.2
    sizes = []
    real = stream_module.melspectrogram
    monkeypatch.setattr(stream_module, "melspectrogram", lambda piece: sizes.append(len(piece)) or real(piece))
    stream = _bare_stream()
    stream.push(wav[:3000])  # a short push first: the long one then starts mid-audio
    stream.push(wav[3000:])  # 25 s at once: ~2000 columns
    columns = stream._mel.shape[1]
    assert stream._col0 == 0 and columns == 1999
    assert len(sizes) >= 1 + 3  # the short push, then the long one in 3 slices at least
    whole = melspectrogram(wav)
    assert np.array_equal(stream._mel, whole[:, :columns])
    slice_samples = (MEL_SLICE_COLUMNS + 4) * HOP_SIZE
    assert max(sizes) <= slice_samples
    # the end of the stream: every remaining column, with the STFT's end padding, in slices too
    stream._add_columns(None)
    assert np.array_equal(stream._mel, whole) and max(sizes) <= slice_samples
