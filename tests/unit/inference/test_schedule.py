"""The schedule of a batch run: the source crops' face meshes are made in the decoding thread, a
batch ahead of the networks (render.LipSyncRenderer.mesh_ahead), and the tracking pass decodes in
a thread ahead of the detector; the frames are the same bits as with everything in one thread."""
import threading

import numpy as np
import pytest

from talkingface.inference.profile import StageProfiler
from talkingface.inference.render import LipSyncRenderer
from talkingface.inference.tracking import detect_every
from talkingface.utils.prefetch import Prefetcher

# 0.8 s of audio over the 0.6 s clip: 20 output frames, so the 15 source frames loop ping-pong
# (their meshes come from the avatar store the second time); batch 4 ends on a short batch.
RUN = dict(infer_batch_size=4, infer_bf16=False)


@pytest.fixture(scope="module")
def lipsync(random_base_checkpoint):
    from talkingface.api import LipSync
    return LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")


@pytest.mark.parametrize("overrides", [{}, {"silence_mode": "source", "silence_min_ms": 40}])
def test_meshes_ahead_give_the_frames_of_one_thread(lipsync, lipsync_media, monkeypatch, overrides):
    threads = []  # the names of the threads that ran each source face mesh
    source_face = LipSyncRenderer._source_face

    def recording(self, source_index, frame):
        threads.append(threading.current_thread().name)
        return source_face(self, source_index, frame)

    monkeypatch.setattr(LipSyncRenderer, "_source_face", recording)
    video, audio = str(lipsync_media["video"]), str(lipsync_media["audio"])
    ahead = lipsync.run(video, audio, **RUN, **overrides)
    ahead_threads = threads[:]
    threads.clear()
    monkeypatch.setattr(LipSyncRenderer, "mesh_ahead", lambda self, items: None)
    inline = lipsync.run(video, audio, **RUN, **overrides)

    assert len(ahead.frames) == len(inline.frames) == 20
    assert all(np.array_equal(a, b) for a, b in zip(ahead.frames, inline.frames))
    assert ahead.mesh_misses == inline.mesh_misses
    # each of the 15 source frames meshed once, and never by the networks' thread
    assert len(ahead_threads) == len(threads) == 15
    assert set(threads) == {threading.main_thread().name}
    assert threading.main_thread().name not in ahead_threads


def test_the_profile_has_cpu_time_per_stage(lipsync, lipsync_media, tmp_path):
    profiler = StageProfiler()
    lipsync._syncer.run(str(lipsync_media["video"]), str(lipsync_media["audio"]), str(tmp_path / "out.mp4"),
                        profiler=profiler, **RUN)
    report = profiler.report()
    wall, cpu = report["ms_per_frame"], report["cpu_ms_per_frame"]
    assert set(wall) == set(cpu)
    for stage in ("decode", "tracking", "mesh_masks", "face_encoder", "audio_decoder", "encode"):
        assert 0 < cpu[stage] <= wall[stage] * 1.05 + 0.5, (stage, wall[stage], cpu[stage])
    assert cpu["wait"] < wall["wait"] + 0.5  # waiting takes no CPU


def test_a_prefetcher_stopped_early_closes_its_generator():
    closed = threading.Event()

    def numbers():
        try:
            yield from range(1000)
        finally:
            closed.set()

    prefetcher = Prefetcher(numbers(), depth=2)
    assert next(iter(prefetcher)) == 0
    prefetcher.close()
    assert closed.is_set()


def test_a_prefetcher_raises_the_generators_error_in_the_consumer():
    def failing():
        yield 1
        raise ValueError("broken input")

    with pytest.raises(ValueError, match="broken input"):
        list(Prefetcher(failing()))


def test_detect_every_never_skips_more_than_the_tracker_fills():
    assert detect_every({"infer_detect_every": 3, "face_max_gap": 5}) == 3
    assert detect_every({"infer_detect_every": 3, "face_max_gap": 1}) == 2
    assert detect_every({"infer_detect_every": 3, "face_max_gap": 0}) == 1
