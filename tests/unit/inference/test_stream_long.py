"""A long stream (10 minutes of audio in 20 ms chunks) gives exactly the frames of batch inference:
the same count, each frame from the same mel window at the same index, each emitted when its
last needed sample arrives (stream.samples_needed), while the audio and mel the stream keeps stay
bounded. This checks the framing of inference/stream.py against LipSyncer.run over 15000 frames,
so the costly parts that do not touch the framing are replaced by cheap stand-ins:
- the avatar is 2 synthetic 96x96 frames (looped ping-pong by both paths) and face tracking
  (inference.tracking.track_faces) returns one fixed box per frame instead of running the detector;
- the generator loop (model.generate.generate_faces as inference/render.py calls it: random
  weights, ~all of the per-frame cost) returns faces whose pixels are the mel chunk each was given
  (scaled to 0..255, nearest-resized to 128x128), and logs the exact bytes of each chunk: equal
  logs prove every frame got the same mel window at the same index in both paths, equal output
  frames that the paste of those faces matches (the network inputs and the region-only generator
  have tests of their own: test_pasted_inference, test_live, test_silence);
- the batch path's in-memory collector keeps a digest of each frame instead of the frame; it
  renders in batches of 50 (row by row stand-ins: the same frames as batches of 1, with 1/50 of
  the thread hand-offs), the stream in batches of 1 (the latency it checks).
Everything else (mel per chunk vs whole-audio mel, mel_chunk windows, the end's right-aligned
windows, ping-pong playback, face-encoder features, paste) is the real code."""
import hashlib

import cv2
import numpy as np
import pytest

from talkingface.inference import pipeline, render, tracking
from talkingface.inference.arrays import ArraySource
from talkingface.utils.audio import MEL_CHUNK_LENGTH, SAMPLE_RATE, n_video_frames_for_audio, samples_needed

CHUNK = SAMPLE_RATE // 50  # 20 ms
BOX = (16.0, 16.0, 80.0, 80.0)


def _digest(array):
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _audio(seconds=600, seed=0):
    """Seeded noise with amplitude bursts (silence, whisper, loud; 0.25 s segments), float32,
    plus 10 ms so the last 20 ms chunk is a partial one."""
    rng = np.random.default_rng(seed)
    n = seconds * SAMPLE_RATE + CHUNK // 2
    levels = rng.choice(np.array([0.0, 0.01, 0.3], np.float32), size=n // 4000 + 1)
    envelope = np.repeat(levels, 4000)[:n]
    return np.clip(rng.standard_normal(n, dtype=np.float32) * envelope, -1, 1).astype(np.float32)


class _DigestCollector(pipeline.FrameCollector):
    def write(self, frame):
        self.frames.append(_digest(frame))


@pytest.fixture
def stubbed_syncer(random_base_checkpoint, monkeypatch):
    from talkingface.config import Config
    config = Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
        mode="infer", device="cpu", checkpoint=random_base_checkpoint["path"], infer_bf16=False,
        infer_batch_size=1))
    syncer = pipeline.LipSyncer(config).load()
    log = []

    def generate_faces(base, crops, references, mel_chunks, **_):  # (n, 80, 16) mels -> (n, 128, 128, 3) faces
        chunks = [np.asarray(chunk, np.float32) for chunk in mel_chunks]
        log.extend(_digest(chunk) for chunk in chunks)
        gray = [cv2.resize(np.clip((chunk + 4) * 32, 0, 255).astype(np.uint8), (128, 128),
                           interpolation=cv2.INTER_NEAREST) for chunk in chunks]
        return np.stack(gray)[..., None].repeat(3, axis=3)

    def track_faces(frames, width, height, **_):
        return np.tile(np.array(BOX, np.float32), (sum(1 for _ in frames), 1))

    monkeypatch.setattr(render, "generate_faces", generate_faces)
    monkeypatch.setattr(tracking, "track_faces", track_faces)
    monkeypatch.setattr(pipeline, "FrameCollector", _DigestCollector)
    return syncer, log


def _avatar():
    rng = np.random.default_rng(1)
    return ArraySource([rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2)])


@pytest.mark.slow
def test_ten_minute_stream_in_20ms_chunks_equals_batch_inference(stubbed_syncer):
    syncer, log = stubbed_syncer
    wav = _audio()
    n_out = n_video_frames_for_audio(len(wav))
    assert n_out == 15000

    batch = syncer.run(_avatar(), wav, infer_batch_size=50)
    batch_mels = list(log)
    assert batch.n_frames == len(batch.frames) == len(batch_mels) == n_out

    stream = syncer.stream(_avatar(), infer_batch_size=1)
    log.clear()  # the stream's warm-up generated once from a zero chunk
    frames, emitted_at, kept_samples, kept_columns = [], [], 0, 0
    for start in range(0, len(wav), CHUNK):
        new = [_digest(frame) for frame in stream.push(wav[start:start + CHUNK])]
        frames += new
        emitted_at += [stream.n_samples] * len(new)
        kept_samples = max(kept_samples, len(stream._audio))
        kept_columns = max(kept_columns, stream._mel.shape[1])
    streamed = len(frames)
    frames += [_digest(frame) for frame in stream.close()]
    stream_mels = list(log)

    assert len(frames) == len(stream_mels) == n_out
    # each frame left with the 20 ms chunk that completed its samples_needed(k)
    needed = [samples_needed(k) for k in range(streamed)]
    mismatch = next((k for k, (a, b) in enumerate(zip(emitted_at, needed)) if not b <= a < b + CHUNK), None)
    assert mismatch is None, f"frame {mismatch} emitted at {emitted_at[mismatch]} samples, needs {needed[mismatch]}"
    assert emitted_at == [min(-(-n // CHUNK) * CHUNK, len(wav)) for n in needed]
    # every frame whose audio had arrived before the end left before close(): close() adds only
    # the frames whose window reaches past the pushed audio
    assert samples_needed(streamed) > len(wav) >= samples_needed(streamed - 1)
    mismatch = next((k for k, (a, b) in enumerate(zip(stream_mels, batch_mels)) if a != b), None)
    assert mismatch is None, f"frame {mismatch}: the stream and batch inference used different mel windows"
    assert frames == batch.frames
    # what the stream keeps never grows with the length of the stream (here: 30000 chunks)
    assert kept_samples <= 4 * CHUNK and kept_columns <= 2 * MEL_CHUNK_LENGTH, (kept_samples, kept_columns)
