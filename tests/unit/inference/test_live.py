"""Live mode (talkingface/live.py): the clock is the count of samples received, the latency stays
bounded when rendering is slower than real time (the oldest audio waiting is skipped in whole
frames and counted as dropped), and closing frees the stream and its thread. A stand-in stream
with stream.py's timing makes the timing exact; the last case runs LipSync.live itself."""
import threading
import time

import numpy as np
import pytest

from talkingface.live import THREAD_PREFIX, LiveSession, check_max_latency
from talkingface.utils.audio import n_video_frames_for_audio, samples_needed
from talkingface.utils.errors import ConfigError, InputError


class FakeStream:
    """LipSyncStream's interface and timing: frame k leaves once stream.samples_needed(k) samples
    are in, rendering takes `render_s`; each frame is filled
    with its own index. close() gives the rest, as many as the audio's length makes."""

    def __init__(self, render_s=0.0, started=None):
        self.render_s, self.n_samples, self.next, self.released, self.restarts = render_s, 0, 0, False, 0
        if started is not None:
            started.wait()

    def _frame(self, k):
        time.sleep(self.render_s)
        self.next = k + 1
        return np.full((2, 2, 3), k % 256, np.uint8)

    def push(self, samples):
        self.n_samples += len(samples)
        while samples_needed(self.next) <= self.n_samples:
            yield self._frame(self.next)

    def restart(self):
        self.n_samples = self.next = 0
        self.restarts += 1

    def close(self):
        return [self._frame(k) for k in range(self.next, n_video_frames_for_audio(self.n_samples))]

    def __exit__(self, *exc):
        self.released = True


def _live(stream, max_latency_ms=500):
    return LiveSession(lambda: stream, max_latency_ms)


def test_with_room_every_frame_is_timed_by_the_samples_received():
    stream = FakeStream()
    with _live(stream, max_latency_ms=60000) as live:
        for _ in range(100):  # 2 s in 20 ms chunks, int16 like a microphone
            live.push(np.zeros(320, np.int16))
        live.end()
        frames = list(live.frames())
    assert [f.sample for f in frames] == [640 * k for k in range(50)]
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(50))
    assert live.dropped == 0 and live.stats()["frames"] == 50 and stream.released


def test_a_backlog_beyond_the_latency_is_skipped_in_whole_frames():
    """2 s arrive while the avatar is still being prepared: the stream restarts at the newest frame
    time whose audio is all in (44 * 640 = 28160 <= 32000 - 3400), the 44 frames before it are
    dropped unrendered, and the timestamps of the 6 frames of the last 3840 samples say where they are."""
    started, streams = threading.Event(), []
    live = LiveSession(lambda: streams.append(FakeStream(started=started)) or streams[0], 500)
    live.push(np.zeros(32000, np.float32))
    started.set()
    live.end()
    frames = list(live.frames())
    assert live.dropped == 44 and streams[0].restarts == 1
    assert [f.sample for f in frames] == [28160 + 640 * k for k in range(6)]
    assert [int(f.image[0, 0, 0]) for f in frames] == list(range(6))  # the stream's frames 0..5 after it


def test_slower_than_real_time_the_latency_stays_bounded():
    """Rendering at 60 ms a frame (25 fps needs 40): audio pushed at its real pace for 3 s; every
    frame leaves at most max_latency_ms (+ a frame's render time) after its audio, frames are
    dropped, and the timestamps stay on the 640-sample grid in order."""
    live = _live(FakeStream(render_s=0.06), max_latency_ms=400)
    latencies, frames = [], []

    def take():
        while (frame := live.get(timeout=5)) is not None:
            frames.append(frame)
            latencies.append(live.stats()["audio_s"] - frame.time)

    taker = threading.Thread(target=take)
    taker.start()
    start = time.monotonic()
    for chunk in range(150):  # 3 s of 20 ms chunks, on time
        time.sleep(max(0.0, start + chunk * 0.02 - time.monotonic()))
        live.push(np.zeros(320, np.float32))
    live.close()
    taker.join()
    samples = [f.sample for f in frames]
    assert live.dropped > 10 and len(frames) > 20, (live.dropped, len(frames))
    assert samples == sorted(set(samples)) and all(s % 640 == 0 for s in samples)
    # + one render, + the 20 ms chunk grid, + stats' 10 ms rounding
    assert max(latencies) <= 0.4 + 0.06 + 0.02 + 0.01, max(latencies)
    assert len(frames) + live.dropped <= 75  # never more frames than the audio has


def test_close_ends_the_thread_and_frees_the_stream():
    stream = FakeStream(render_s=0.01)
    live = _live(stream)
    live.push(np.zeros(16000, np.float32))
    live.close()
    assert not live.alive and stream.released
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
    assert live.get(timeout=0) is None or live.state == "stopped"


def test_the_stream_error_ends_the_session_in_one_line():
    def broken():
        raise InputError("no face in avatar.mp4")

    live = LiveSession(broken, 500)
    with pytest.raises(InputError, match="^no face in avatar.mp4$"):
        list(live.frames())
    assert live.stats()["state"] == "failed" and live.stats()["error"] == "no face in avatar.mp4"


def test_a_latency_below_the_lookahead_is_a_config_error():
    with pytest.raises(ConfigError, match="live_max_latency_ms must be at least 293"):
        check_max_latency(200)


def test_echo_audio_leaves_with_the_frames():
    """The audio sent back starts at the first frame's time and never runs ahead of the frames."""
    live = _live(FakeStream(), max_latency_ms=60000)
    assert live.audio(320) is None
    live.push(np.full(6400, 0.5, np.float32))  # 0.4 s: frames 0..4 are ready (samples_needed(4) = 5800)
    first = live.get(timeout=10)
    while live.frames_rendered < 5 and live.get(timeout=1) is not None:
        pass
    pieces = []
    while (piece := live.audio(320)) is not None:
        pieces.append(piece)
    live.close()
    assert first.sample == 0 and pieces[0][0] == 0
    assert sum(len(p) for _, p in pieces) == 5 * 640  # up to the end of the last frame out
    assert all(p.dtype == np.int16 and p.max() == 16384 for _, p in pieces)


@pytest.mark.slow
def test_lipsync_live_gives_the_frames_of_stream(random_base_checkpoint, tmp_path):
    """LipSync.live over the demo face: with room enough, its frames are stream()'s frames, in
    order, each at 640 k samples; the avatar goes into the cache once."""
    from talkingface import LipSync
    from talkingface.data.dataprocess.demo import make_demo_clip, synthesize_speech

    make_demo_clip(tmp_path / "face.mp4", 0, 0.4, 128)
    speech = synthesize_speech(0.6, np.random.default_rng(1))
    lipsync = LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu",
                      avatar_cache_dir=str(tmp_path / "cache"), infer_bf16=False)
    with lipsync.stream(tmp_path / "face.mp4", infer_batch_size=1) as stream:
        expected = list(stream.push(speech)) + stream.close()
    live = lipsync.live(tmp_path / "face.mp4", max_latency_ms=60000)
    for chunk in np.array_split(speech, 30):
        live.push(chunk)
    live.end()
    frames = list(live.frames())
    assert len(frames) == len(expected) == n_video_frames_for_audio(len(speech))
    assert [f.sample for f in frames] == [640 * k for k in range(len(frames))]
    assert all(np.array_equal(f.image, e) for f, e in zip(frames, expected))
    assert len(list((tmp_path / "cache").glob("*.avatar"))) == 1 and not live.alive

    # 0.6 s at once with 300 ms allowed: the real stream restarts at 9 * 640 (<= 9600 - 3400), the
    # 9 frames before are dropped, the 6 of the last 3840 samples follow at close
    live = lipsync.live(tmp_path / "face.mp4", max_latency_ms=300)
    live.push(speech)
    live.end()
    frames = list(live.frames())
    assert live.dropped == 9 and [f.sample for f in frames] == [5760 + 640 * k for k in range(6)]


def test_live_server_answers_queues_and_stops(tmp_path):
    """The endpoints without a browser: aiortc's own client makes the offer (microphone track,
    video received only); a second offer for the same avatar and model is told it is queued;
    stop ends the session and its thread; a bad body or an unknown avatar is one line."""
    import asyncio

    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from talkingface.live import LiveServer

    def resolve(body):
        if body.get("avatar") != "face":
            raise InputError("prepare the avatar first")
        return ("face.mp4", "Base"), FakeStream, 500

    async def offer():
        client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        client.addTrack(AudioStreamTrack())
        client.addTransceiver("video", direction="recvonly")
        await client.setLocalDescription(await client.createOffer())
        await client.close()
        return {"sdp": client.localDescription.sdp, "type": "offer", "avatar": "face"}

    body = asyncio.run(offer())
    with TestClient(Starlette(routes=LiveServer(resolve).routes())) as http:
        first = http.post("/live/offer", json=body)
        assert first.status_code == 200, first.text
        answer = first.json()
        assert answer["type"] == "answer" and "m=video" in answer["sdp"] and "m=audio" in answer["sdp"]
        queued = http.post("/live/offer", json=body)
        assert queued.status_code == 409 and queued.json()["error"].startswith("queued: ")
        assert http.get("/live/stats").json()["sessions"] == 1
        state = http.get("/live/stats", params={"session": answer["session"]}).json()["state"]
        assert state in ("starting", "running")
        assert http.post("/live/stop", json={"session": answer["session"]}).json() == {"stopped": True}
        stats = http.get("/live/stats").json()
        assert stats["sessions"] == 0 and not [t for t in stats["threads"] if t.startswith(THREAD_PREFIX)]
        again = http.post("/live/offer", json=body)  # free again
        assert again.status_code == 200 and http.post("/live/stop", json={"session": again.json()["session"]}).json()
        assert http.post("/live/offer", json={"sdp": "v=0"}).json() == {
            "error": "error: send the offer as JSON {sdp, type, avatar}"}
        assert http.post("/live/offer", json=dict(body, avatar="other")).json() == {
            "error": "error: prepare the avatar first"}
