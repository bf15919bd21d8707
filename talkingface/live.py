"""Live lip-sync: microphone audio in, lip-synced frames out, with a latency that stays bounded.

    live = LipSync("HyperLipsBase", dataset="demo").live("avatar.mp4")  # the stream of stream.py
    live.push(chunk)                    # any thread, any time: 16 kHz samples as they are recorded
    frame = live.get(timeout=1.0)       # LiveFrame(image=BGR uint8, sample=its time in samples) or None
    live.stats()                        # {"fps", "latency_ms", "dropped", ...}
    live.close()                        # stops the worker thread and frees the stream

A LiveSession runs one LipSyncStream (talkingface/inference/stream.py, infer_batch_size=1) in a
worker thread of its own. The clock is the count of audio samples received: a frame shows the
audio from its time on (stream.py's timing: frame k of a stream at sample 640 k), and its
timestamp `sample` is that time counted in samples received; the audio sent back with the frames
(audio()) carries the same count, so audio and video cannot drift apart. Latency of a frame: the
audio received after its time when it leaves (get()); at least the up to 0.2125 s of audio the
model hears after a frame's time (utils.audio.samples_needed), plus its render.

A machine slower than real time: audio arriving while a frame renders waits, and the audio is
given to the stream one frame (640 samples) at a time. When the next frame is already later than
max_latency_ms allows (less a frame for its render), the audio waiting is skipped up to the
newest frame time whose audio is all in, and the stream restarts its audio timeline there
(LipSyncStream.restart: the avatar goes on, the frames in between are never rendered and count
as dropped). Skipping before rendering is what saves the time: frames leave at most
max_latency_ms plus one frame's render time after their time, whatever the machine, and the
video holds its last frame over a skip while the audio sent back plays on. A frame that waits
for its consumer (the WebRTC sender) beyond max_latency_ms is dropped when a newer one is there.

The WebRTC side (aiortc, mounted on the web app's server: talkingface/app.py) is LiveServer below:
one POST /live/offer with the browser's SDP, GET /live/stats, POST /live/stop.
"""
import asyncio
import collections
import dataclasses
import fractions
import logging
import secrets
import threading
import time

import numpy as np

from talkingface.utils.audio import (LEAST_LIVE_LATENCY_MS, LOOKAHEAD_SAMPLES, SAMPLE_RATE, SAMPLES_PER_FRAME,
                                     as_mono_16k)
from talkingface.utils.errors import ConfigError, TalkingFaceError

logger = logging.getLogger(__name__)

THREAD_PREFIX = "live-"
LIVE_STREAM_SETTINGS = {"infer_batch_size": 1, "avatar_cache": "on"}  # lowest latency; a prepared avatar
ECHO_KEPT_S = 10          # received audio kept for the echo at most this long
STATS_WINDOW_S = 2.0       # fps and latency are over the frames of the last 2 s


@dataclasses.dataclass
class LiveFrame:
    image: np.ndarray  # BGR uint8, the avatar's size
    sample: int        # its time: the count of samples received at the start of its audio
    render_s: float = 0.0  # how long its push() and render took (its share of the latency)

    @property
    def time(self):
        return self.sample / SAMPLE_RATE


def check_max_latency(max_latency_ms):
    """A latency bound sent by a client (the config's is checked by the schema, with the same least)."""
    if float(max_latency_ms) < LEAST_LIVE_LATENCY_MS:
        raise ConfigError(f"live_max_latency_ms must be at least {LEAST_LIVE_LATENCY_MS} (a frame needs up to "
                          f"0.2125 s of audio after its time, and two frames more: the one arriving, the one "
                          f"rendering), got {max_latency_ms}")
    return float(max_latency_ms)


class LiveSession:
    """One live stream. open_stream(): the LipSyncStream to run, called in the worker thread (its
    preparation, a cache hit for a prepared avatar, does not hold up the caller)."""

    def __init__(self, open_stream, max_latency_ms, name=None):
        # how late the next frame may be before it is rendered (its render, a frame at most, comes on top)
        self._max_lag = int(check_max_latency(max_latency_ms) * SAMPLE_RATE / 1000) - SAMPLES_PER_FRAME
        self._open_stream = open_stream
        self._cond = threading.Condition()
        self._pending, self._pending_samples = collections.deque(), 0
        self._received = 0        # samples received: the clock
        self._fed = 0             # samples received that went to the stream or were skipped
        self._timeline = 0        # sample at which the stream's audio timeline began (a multiple of 640)
        self._timeline_frames = 0  # frames rendered on it
        self._out = collections.deque()
        self._recent = collections.deque()  # (wall time, latency in samples, render s) of the frames taken
        self._audio = collections.deque()   # (first sample, samples) received, for the echo
        self._released = None     # audio before this sample may be sent (None: no frame yet)
        self._sent_audio = 0
        self.frames_rendered, self.dropped = 0, 0
        self.state, self.error = "starting", None
        self._stopping = self._ending = False
        self.name = name or secrets.token_hex(4)
        self._thread = threading.Thread(target=self._run, name=THREAD_PREFIX + self.name, daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------------------------
    def push(self, samples, sample_rate=SAMPLE_RATE):
        """Audio as it arrives (float in [-1, 1] or integer PCM; utils.audio.as_mono_16k)."""
        samples = as_mono_16k(samples, sample_rate)
        if not samples.size:
            return
        with self._cond:
            if self._stopping or self._ending:
                return
            self._pending.append(samples)
            self._audio.append((self._received, samples))
            while self._audio and self._audio[0][0] < self._received - ECHO_KEPT_S * SAMPLE_RATE:
                self._audio.popleft()  # an echo nobody reads (the Python API) is not kept for ever
            self._pending_samples += samples.size
            self._received += samples.size
            self._cond.notify_all()

    def get(self, timeout=None):
        """The next frame (LiveFrame), or None after `timeout` seconds or once the session ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._out and self.state in ("starting", "running"):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            self._drop_late()
            if not self._out:
                return None
            frame = self._out.popleft()
            now = time.monotonic()
            self._recent.append((now, self._received - frame.sample, frame.render_s))
            while self._recent and now - self._recent[0][0] > STATS_WINDOW_S:
                self._recent.popleft()
            return frame

    def _drop_late(self):
        """Called with the lock held: a frame that waited for its consumer (the sender) until it is
        later than max_latency_ms is dropped when a newer one is there to take its place (the newest
        is kept: on a machine that renders a frame slower than that, late frames beat none)."""
        while len(self._out) > 1 and self._received - self._out[0].sample > self._max_lag + SAMPLES_PER_FRAME:
            self._out.popleft()
            self.dropped += 1

    def frames(self):
        """The frames until the session ends (end() or close()); raises its error, if it had one."""
        while True:
            frame = self.get()
            if frame is None:
                break
            yield frame
        if self.error is not None:
            raise self.error

    def audio(self, max_samples):
        """(first sample, int16 samples) of the received audio whose frames have left (the echo sent
        with them, from the first frame's time on), at most max_samples, or None when there is none."""
        with self._cond:
            if self._released is None:
                return None
            while self._audio and self._audio[0][0] + self._audio[0][1].size <= self._sent_audio:
                self._audio.popleft()
            if not self._audio or self._sent_audio >= self._released:
                return None
            first, samples = self._audio[0]
            start = max(self._sent_audio, first)
            stop = min(first + samples.size, self._released, start + max_samples)
            self._sent_audio = stop
            piece = samples[start - first:stop - first]
        return start, np.clip(np.round(piece * 32768), -32768, 32767).astype(np.int16)

    def stats(self):
        with self._cond:
            now = time.monotonic()
            recent = [latency for t, latency, _ in self._recent if now - t <= STATS_WINDOW_S]
            render = [render_s for t, _, render_s in self._recent if now - t <= STATS_WINDOW_S]
            return {"state": self.state, "error": None if self.error is None else str(self.error),
                    "frames": self.frames_rendered, "dropped": self.dropped,
                    "fps": round(len(recent) / STATS_WINDOW_S, 1),
                    "latency_ms": round(1000 * float(np.mean(recent)) / SAMPLE_RATE) if recent else None,
                    "max_latency_ms": round(1000 * max(recent) / SAMPLE_RATE) if recent else None,
                    "render_ms": round(1000 * float(np.mean(render))) if render else None,
                    "audio_s": round(self._received / SAMPLE_RATE, 2)}

    def end(self):
        """The end of the audio: the last frames follow (stream.close()), then the session ends."""
        with self._cond:
            self._ending = True
            self._cond.notify_all()

    def close(self, timeout=60):
        """Stop now: the worker thread ends (after the frame it is rendering) and frees the stream."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self):
        return self._thread.is_alive()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the worker thread ---------------------------------------------------------------------
    def _run(self):
        stream = None
        try:
            stream = self._open_stream()
            with self._cond:
                self.state = "running"
            while True:
                with self._cond:
                    while not (self._pending or self._stopping or self._ending):
                        self._cond.wait()
                    if self._stopping:
                        break
                    restart = self._skip_if_behind()
                    piece = self._take(SAMPLES_PER_FRAME)  # a frame's audio at a time: the check above runs per frame
                    ending = self._ending and not self._pending
                if restart:
                    stream.restart()
                if piece is not None:
                    started = time.perf_counter()
                    for image in stream.push(piece):
                        self._emit(image, time.perf_counter() - started)
                        if self._stopping:
                            break
                        started = time.perf_counter()
                if ending and not self._stopping:
                    for image in stream.close():
                        self._emit(image)
                    break
            with self._cond:
                self.state = "stopped"
        except TalkingFaceError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug: one line for the page, the traceback for the log
            logger.exception("live session %s failed", self.name)
            self._fail(RuntimeError(f"unexpected {type(exc).__name__}: {str(exc).strip()[:200]} (see the log)"))
        finally:
            if stream is not None:
                stream.__exit__(None, None, None)  # releases the renderer, the avatar store and the video
            with self._cond:
                self._cond.notify_all()

    def _skip_if_behind(self):
        """Called with the lock held: when the next frame is already later than max_latency allows,
        skip the audio waiting up to the newest frame time whose audio can be in by now, and tell
        the caller to restart the stream there (True). The frames of the skipped audio are dropped
        without being rendered; the timestamps stay on the 640-sample grid."""
        next_frame = self._timeline + self._timeline_frames * SAMPLES_PER_FRAME
        if self._received - next_frame <= self._max_lag:
            return False
        grid = SAMPLES_PER_FRAME
        restart_at = max(-(-self._fed // grid) * grid, (self._received - LOOKAHEAD_SAMPLES) // grid * grid)
        if restart_at - self._fed > self._pending_samples:
            return False  # less than a frame's audio waits: wait for it
        self._take(restart_at - self._fed)
        self.dropped += (restart_at - next_frame) // grid
        self._timeline, self._timeline_frames = restart_at, 0
        return True

    def _take(self, n):
        """Called with the lock held: the first n samples waiting (fewer if fewer wait), or None."""
        pieces, taken = [], 0
        while self._pending and taken < n:
            chunk = self._pending.popleft()
            if taken + chunk.size > n:
                self._pending.appendleft(chunk[n - taken:])
                chunk = chunk[:n - taken]
            pieces.append(chunk)
            taken += chunk.size
        self._pending_samples -= taken
        self._fed += taken
        return np.concatenate(pieces) if pieces else None

    def _fail(self, error):
        with self._cond:
            self.state, self.error = "failed", error

    def _emit(self, image, render_s=0.0):
        with self._cond:
            sample = self._timeline + self._timeline_frames * SAMPLES_PER_FRAME
            self._timeline_frames += 1
            self.frames_rendered += 1
            self._out.append(LiveFrame(image, sample, render_s))
            self._drop_late()
            if self._released is None:
                self._sent_audio = sample  # the echo starts with the first frame
            self._released = sample + SAMPLES_PER_FRAME
            self._cond.notify_all()


QUEUED = ("queued: a live session with this avatar and this model is running; this page tries again every "
          "2 s (or prepare another avatar, or pick another model)")
VIDEO_CLOCK = 90000  # RTP's video clock: 3600 ticks per 25 fps frame, exact on the 640-sample grid
AUDIO_PACKET = SAMPLE_RATE // 50  # 20 ms, Opus's usual packet


@dataclasses.dataclass
class _Peer:
    connection: object  # aiortc.RTCPeerConnection
    session: LiveSession
    key: tuple
    tasks: list


class LiveServer:
    """The WebRTC endpoints of the web app (aiortc on the app's own FastAPI server).

    resolve(body) -> (key, open_stream, max_latency_ms): the avatar and model the page asked for
    (one JSON body with the SDP offer), or a TalkingFaceError; one session per key at a time, the others are told
    they are queued (HTTP 409). Signalling is the one POST of aiortc's examples: the browser sends
    its offer with every ICE candidate in it, the answer comes back the same way."""

    def __init__(self, resolve):
        self._resolve = resolve
        self._peers = {}
        self._busy = {}

    def routes(self):
        from starlette.routing import Route

        return [Route("/live/offer", self.offer, methods=["POST"]), Route("/live/stop", self.stop, methods=["POST"]),
                Route("/live/stats", self.stats, methods=["GET"])]

    async def offer(self, request):
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from starlette.responses import JSONResponse

        try:
            body = await request.json()
            description = RTCSessionDescription(sdp=str(body["sdp"]), type=str(body["type"]))
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "error: send the offer as JSON {sdp, type, avatar}"}, status_code=400)
        try:
            key, open_stream, max_latency_ms = self._resolve(body)
            check_max_latency(max_latency_ms)
        except TalkingFaceError as exc:
            return JSONResponse({"error": f"error: {exc}"}, status_code=400)
        if key in self._busy:
            return JSONResponse({"error": QUEUED}, status_code=409)
        session_id = secrets.token_urlsafe(8)
        self._busy[key] = session_id
        session = LiveSession(open_stream, max_latency_ms, name=session_id)
        connection = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN server: nothing leaves the host
        peer = self._peers[session_id] = _Peer(connection, session, key, [])

        @connection.on("track")
        def on_track(track):
            if track.kind == "audio":
                peer.tasks.append(asyncio.ensure_future(_receive_audio(track, session)))

        @connection.on("connectionstatechange")
        async def on_state():
            if connection.connectionState in ("failed", "closed"):
                await self.end(session_id)

        try:
            await connection.setRemoteDescription(description)
            video_track, audio_track = _track_classes()
            connection.addTrack(video_track(session))
            connection.addTrack(audio_track(session))
            await connection.setLocalDescription(await connection.createAnswer())
        except Exception as exc:  # a malformed or unsupported offer
            await self.end(session_id)
            return JSONResponse({"error": f"error: the WebRTC offer was refused: {exc}"}, status_code=400)
        answer = connection.localDescription
        return JSONResponse({"sdp": answer.sdp, "type": answer.type, "session": session_id})

    async def stop(self, request):
        from starlette.responses import JSONResponse

        try:
            session_id = str((await request.json())["session"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "error: send {session}"}, status_code=400)
        return JSONResponse({"stopped": await self.end(session_id)})

    async def stats(self, request):
        """One session's figures (?session=ID), or without it the server's: sessions open and its
        threads by name (the browser test checks that a stopped session leaves none)."""
        from starlette.responses import JSONResponse

        session_id = request.query_params.get("session")
        if session_id is None:
            return JSONResponse({"sessions": len(self._peers),
                                 "threads": sorted(t.name for t in threading.enumerate())})
        peer = self._peers.get(session_id)
        if peer is None:
            return JSONResponse({"state": "stopped"})
        return JSONResponse(peer.session.stats())

    async def end(self, session_id):
        """Close the connection, stop the worker thread, free the avatar/model pair."""
        peer = self._peers.pop(session_id, None)
        if peer is None:
            return False
        self._busy.pop(peer.key, None)
        peer.session.close(timeout=0)  # asks the thread to stop; waited for below without blocking the loop
        for task in peer.tasks:
            task.cancel()
        await peer.connection.close()
        while peer.session.alive:
            await asyncio.sleep(0.02)
        return True

    def close_all(self):
        """The app stops: every session's thread is asked to end (they are daemon threads)."""
        for peer in list(self._peers.values()):
            peer.session.close(timeout=5)
        self._peers.clear()
        self._busy.clear()


async def _receive_audio(track, session):
    """The browser's microphone track -> 16 kHz mono -> session.push."""
    import av
    from aiortc.mediastreams import MediaStreamError

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        while True:
            frame = await track.recv()
            for piece in resampler.resample(frame):
                session.push(piece.to_ndarray().reshape(-1))
    except MediaStreamError:  # the browser stopped sending
        pass


_TRACKS = []


def _track_classes():
    """(video track, audio track) classes over a LiveSession: aiortc is imported when a session starts."""
    if _TRACKS:
        return _TRACKS
    import av
    from aiortc import MediaStreamTrack
    from aiortc.mediastreams import MediaStreamError

    class SessionTrack(MediaStreamTrack):
        """A track that sends what its session releases, polled without blocking the event loop."""

        def __init__(self, session):
            super().__init__()
            self.session = session

        async def next_from(self, take):
            """take()'s first result that is not None; ends the track when the session has ended."""
            while (item := take()) is None:
                if not self.session.alive:
                    raise MediaStreamError
                await asyncio.sleep(0.005)
            return item

    class LiveVideoTrack(SessionTrack):
        kind = "video"

        async def recv(self):
            frame = await self.next_from(lambda: self.session.get(timeout=0))
            video = av.VideoFrame.from_ndarray(frame.image, format="bgr24")
            video.pts = frame.sample * VIDEO_CLOCK // SAMPLE_RATE
            video.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            return video

    class LiveAudioTrack(SessionTrack):
        """The received audio sent back with the frames (same clock, released as they leave)."""
        kind = "audio"

        async def recv(self):
            first, pcm = await self.next_from(lambda: self.session.audio(AUDIO_PACKET))
            audio = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
            audio.sample_rate = SAMPLE_RATE
            audio.pts = first
            audio.time_base = fractions.Fraction(1, SAMPLE_RATE)
            return audio

    _TRACKS.extend((LiveVideoTrack, LiveAudioTrack))
    return _TRACKS
