"""Real-time inference: the avatar cache (inference/avatar.py), the streaming API and --mode=stream
(inference/stream.py), the per-stage profiler. Random-init weights on a 4-frame 480x270 clip with
0.36 s of audio (9 frames: the video loops ping-pong): the point is identity of outputs and the
code paths, not quality."""
import io
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from talkingface.inference import encode, pipeline, tracking
from talkingface.inference.avatar import RECORD, AvatarCache, FaceRecord, cache_key
from talkingface.inference.prepare import avatar_settings
from talkingface.inference.profile import StageProfiler
from talkingface.inference.stream import y4m_header
from talkingface.utils.audio import n_video_frames_for_audio, samples_needed
from talkingface.utils.errors import InputError
from paths import REPO_ROOT

REPO_ROOT = str(REPO_ROOT)


@pytest.fixture(scope="module")
def syncer(random_base_checkpoint):
    from talkingface.config import Config
    config = Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
        mode="infer", device="cpu", checkpoint=random_base_checkpoint["path"], infer_bf16=False,
        infer_batch_size=1))  # no padded frames: the tests compute only what they compare
    return pipeline.LipSyncer(config).load()


@pytest.fixture
def clip(four_frame_clip):
    return four_frame_clip


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_avatar_cache_hit_gives_the_same_frames_without_tracking(syncer, clip, tmp_path, monkeypatch):
    video, wav = clip
    folder = str(tmp_path / "avatars")
    off = syncer.run(video, wav)
    profiler = StageProfiler()
    decodes = []
    real_decode = pipeline.FrameSource._decode
    monkeypatch.setattr(pipeline.FrameSource, "_decode", lambda self: decodes.append(1) or real_decode(self))
    # the avatar is built by a run with another audio ...
    syncer.run(video, wav[::-1].copy(), avatar_cache="on", avatar_cache_dir=folder, profiler=profiler)
    assert profiler.seconds["face_encoder"] > 0 and profiler.seconds["tracking"] > 0
    assert len(decodes) == 2   # tracking, then the avatar pass; generation reads the kept frames
    assert sorted(os.listdir(folder))[0].endswith(".avatar") and len(os.listdir(folder)) == 2
    # ... and a hit needs no face tracking, no face mesh of the source, no face encoder
    monkeypatch.setattr(tracking, "track_faces", lambda *a, **k: pytest.fail("tracked despite the cache"))
    profiler = StageProfiler()
    hit = syncer.run(video, wav, avatar_cache="on", avatar_cache_dir=folder, profiler=profiler)
    assert profiler.seconds["face_encoder"] == 0 and profiler.seconds["mesh_masks"] == 0
    assert _same(off.frames, hit.frames) and np.array_equal(off.boxes, hit.boxes, equal_nan=True)  # bit for bit
    report = profiler.report()
    assert report["frames"] == len(hit.frames) and set(report["ms_per_frame"]) >= {"decode", "paste", "wait"}


def test_temporary_wav_of_samples_is_named_for_stale_cleanup(syncer, clip, tmp_path, monkeypatch):
    from talkingface.utils.files import temp_name
    video, wav = clip
    stale = temp_name(tmp_path / "out.mp4", ".wav").name.replace(f"-{os.getpid()}-", "-999999999-")
    stale = os.path.join(tmp_path, stale)
    open(stale, "wb").close()  # what a run killed with kill -9 left beside its output
    seen = []
    real_save = encode.save_wav
    monkeypatch.setattr(encode, "save_wav", lambda path, samples: seen.append(path) or real_save(path, samples))
    syncer.run(video, wav[:1600], output=str(tmp_path / "out.mp4"))
    assert os.path.basename(seen[0]).startswith(".out.tmp-") and seen[0].endswith(".wav")
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]


def test_every_setting_that_shapes_the_avatar_changes_the_key(syncer):
    def key_settings(settings):
        return avatar_settings(syncer.base_digest(), settings)

    base = syncer.settings(infer_bf16=False, reference_frame="first")
    reference = key_settings(base)
    keys = {cache_key("v", reference)}
    for overrides in ({"face_pad_bottom": 11}, {"box_smooth_window": 3}, {"detect_max_side": 320},
                      {"face_max_gap": 2}, {"infer_mask_feather": 0.1}):
        keys.add(cache_key("v", key_settings(syncer.settings(infer_bf16=False, **overrides))))
    keys |= {cache_key("v", key_settings(base.with_values(bf16=True))),
             cache_key("v", key_settings(base.with_values(reference="same"))), cache_key("other video", reference)}
    assert len(keys) == 9
    assert cache_key("v", key_settings(base)) == cache_key("v", reference)
    weights = next(syncer.base.parameters())
    with torch.no_grad():
        weights[(0,) * weights.dim()] += 1  # other weights: another key
        try:
            assert cache_key("v", key_settings(base)) not in keys
        finally:
            weights[(0,) * weights.dim()] -= 1


def _fill(cache, key, n=3):
    store = cache.new_store(key, n)
    for i in range(n):
        store.put(i, FaceRecord((1, 2, 3, 4), np.full((128, 128, 3), i, np.uint8), np.zeros((128, 128, 3), np.uint8),
                                np.ones((128, 128), np.float32), None,
                                tuple(np.full(RECORD[f"f{j + 1}"].shape, i, np.float32) for j in range(4))))
    cache.save(key, store, {"boxes": [[0, 0, 1, 1]] * n, "size": [8, 8]})
    store.close()


def test_corrupt_or_truncated_entries_are_ignored_with_one_log_line(tmp_path, caplog):
    cache = AvatarCache(tmp_path, limit_mb=100)
    _fill(cache, "a")
    meta, store = cache.load("a")
    assert store.n == 3 and store.get(2).crop[0, 0, 0] == 2 and store.get(1).landmarks is None
    store.close()
    with open(tmp_path / "a.avatar", "r+b") as f:  # one flipped byte
        f.seek(RECORD.itemsize + 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 1]))
    with caplog.at_level(logging.WARNING, logger="talkingface"):
        assert cache.load("a") is None
    assert len([r for r in caplog.records if "rebuilt" in r.getMessage()]) == 1
    assert not os.listdir(tmp_path)  # removed: the next run rebuilds it
    _fill(cache, "b")
    os.truncate(tmp_path / "b.avatar", RECORD.itemsize * 2)
    assert cache.load("b") is None
    _fill(cache, "c")
    (tmp_path / "c.json").write_text("{not json")
    assert cache.load("c") is None


def test_kill_9_while_writing_leaves_no_entry_and_the_debris_goes(tmp_path):
    pid = os.fork()
    if pid == 0:  # a writer killed with SIGKILL half-way through its records
        store = AvatarCache(tmp_path, 100).new_store("k", 4)
        store.records["ready"][:2] = 1
        store.records.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    leftovers = os.listdir(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".k.tmp-")
    cache = AvatarCache(tmp_path, 100)  # a later run: the dead process's temp file is removed
    assert cache.load("k") is None and not os.listdir(tmp_path)


def test_lru_eviction_keeps_the_folder_under_its_limit(tmp_path):
    entry_mb = 3 * RECORD.itemsize / 2 ** 20
    cache = AvatarCache(tmp_path, limit_mb=2.5 * entry_mb)
    _fill(cache, "old")
    _fill(cache, "mid")
    os.utime(tmp_path / "old.json", (1, 1))
    os.utime(tmp_path / "mid.json", (2, 2))
    cache.load("old")[1].close()  # used again: now the most recent
    _fill(cache, "new")
    assert {e[0] for e in cache.entries()} == {"old", "new"}
    cache.clear()
    assert not os.listdir(tmp_path)


def test_an_entry_larger_than_the_whole_cache_is_used_but_not_kept(syncer, clip, tmp_path, caplog):
    video, wav = clip
    folder = tmp_path / "avatars"
    off = syncer.run(video, wav)
    with caplog.at_level(logging.INFO, logger="talkingface"):
        small = syncer.run(video, wav, avatar_cache="on", avatar_cache_dir=str(folder), avatar_cache_mb=1)
    assert _same(off.frames, small.frames)  # the run's output is made as without the cache
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2 ** 20 and not os.listdir(folder)
    lines = [r.getMessage() for r in caplog.records if "avatar_cache_mb=1" in r.getMessage()]
    assert len(lines) == 1, lines
    # 4 frames of 0.6 MB: 2.3 MB with the metadata
    assert "its entry of 2.3 MB is larger than avatar_cache_mb=1, so it was not kept; " \
           "set avatar_cache_mb=3 or more to keep it" in lines[0]
    assert not any("avatar cached" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="talkingface"):  # as it says: with 3 MB it is kept
        syncer.run(video, wav, avatar_cache="on", avatar_cache_dir=str(folder), avatar_cache_mb=3)
    assert any("avatar cached" in r.getMessage() for r in caplog.records) and len(os.listdir(folder)) == 2


def test_an_avatar_cache_dir_that_takes_no_files_is_one_config_error(syncer, clip, tmp_path, monkeypatch):
    from talkingface.utils.errors import ConfigError
    video, wav = clip
    monkeypatch.setattr(tracking, "track_faces", lambda *a, **k: pytest.fail("faces tracked before the check"))
    # /proc exists, but even root cannot create files in it
    with pytest.raises(ConfigError, match=r"^avatar_cache_dir=/proc is not writable \(.+\): set avatar_cache_dir "
                                          r"to a writable folder or avatar_cache=off$"):
        syncer.run(video, wav, avatar_cache="on", avatar_cache_dir="/proc")
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"^avatar_cache_dir=.*afile/cache cannot be created \(Not a directory\)"):
        syncer.run(video, wav, avatar_cache="on", avatar_cache_dir=str(tmp_path / "afile" / "cache"))
    if os.geteuid() != 0:  # permission bits stop a normal user (root passes them)
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            with pytest.raises(ConfigError, match="read_only is not writable"):
                AvatarCache(folder, 100)
        finally:
            folder.chmod(0o755)


def _stream(syncer, video, wav, chunk, **settings):
    stream = syncer.stream(video, **settings)
    frames, emitted_at = [], []
    for start in range(0, len(wav), chunk):
        new = list(stream.push(wav[start:start + chunk]))
        frames += new
        emitted_at += [stream.n_samples] * len(new)
    streamed = len(frames)
    frames += stream.close()
    return frames, emitted_at, streamed


def test_stream_equals_batch_inference_frame_for_frame(syncer, clip):
    video, wav = clip
    wav = np.concatenate([wav[:2000], np.zeros(2000, np.float32), wav[2000:]])  # a silent stretch
    batch = syncer.run(video, wav, infer_batch_size=1).frames
    frames, emitted_at, streamed = _stream(syncer, video, wav, 1, infer_batch_size=1)  # 1-sample chunks
    assert len(frames) == len(batch) == n_video_frames_for_audio(len(wav))
    assert _same(frames, batch)
    # each frame left exactly when its last needed sample arrived
    assert emitted_at == [samples_needed(k) for k in range(streamed)] and streamed >= len(batch) - 5
    # int16 chunks of odd sizes, groups of 3 frames (the batch path's groups): the same frames again
    pcm = np.clip(np.round(wav * 32768), -32768, 32767).astype(np.int16)
    as_float = pcm.astype(np.float32) / 32768
    frames3, _, _ = _stream(syncer, video, pcm, 777, infer_batch_size=3)
    assert _same(frames3, syncer.run(video, as_float, infer_batch_size=3).frames)


@pytest.mark.slow
def test_hr_stream_equals_batch_inference(random_base_checkpoint, clip, tmp_path):
    from talkingface.config import Config
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import save_checkpoint_file
    torch.manual_seed(1)
    hr_path = str(tmp_path / "hr.pth")
    save_checkpoint_file({"state_dict": build_network("HRDecoder", 1).state_dict()}, hr_path)
    config = Config(model="HyperLipsHR", dataset="demo", config_dict=dict(
        mode="infer", device="cpu", checkpoint=hr_path, base_checkpoint=random_base_checkpoint["path"],
        infer_bf16=False, infer_batch_size=2))
    hr = pipeline.LipSyncer(config).load()
    video, wav = clip
    frames, _, _ = _stream(hr, video, wav, 640)  # groups of 2 frames, as the batch path's
    assert _same(frames, hr.run(video, wav).frames)


def test_stream_edges(syncer, clip):
    video = clip[0]
    stream = syncer.stream(video)
    assert list(stream.push(np.zeros(0, np.float32))) == [] and list(stream.push(np.zeros(500, np.float32))) == []
    with pytest.raises(InputError, match="lasts"):
        stream.close()  # 500 samples: shorter than two frames, as batch inference refuses
    with pytest.raises(InputError, match="after close"):
        stream.push(np.zeros(10, np.float32))
    assert stream.close() == []
    with syncer.stream(video, infer_batch_size=1) as stream:
        with pytest.raises(InputError, match="array of numbers"):
            stream.push(np.array(["a"] * 10))
        with pytest.raises(InputError, match="NaN"):
            stream.push(np.full(10, np.nan, np.float32))
        silence = list(stream.push(np.zeros(8000, np.float32)))  # 0.5 s of silence
        assert len(silence) == 8 and silence[0].shape == (270, 480, 3)  # frames 0..7 need <= 8000 samples
        assert len(stream.close()) == 4  # 0.5 s: 12 frames in all


def _read_y4m(data):
    header, _, rest = data.partition(b"\n")
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    size = width * height * 3 // 2
    frames = []
    while rest:
        assert rest.startswith(b"FRAME\n")
        frames.append(rest[6:6 + size])
        rest = rest[6 + size:]
    assert all(len(f) == size for f in frames)
    return header, width, height, frames


@pytest.mark.slow
def test_mode_stream_through_a_pipe(clip, random_base_checkpoint, tmp_path, monkeypatch, capsys):
    video, wav = clip
    pcm = np.clip(np.round(wav * 32768), -32768, 32767).astype("<i2").tobytes()
    command = [sys.executable, os.path.join(REPO_ROOT, "run_talkingface.py"), "--model=HyperLipsBase",
               "--dataset=demo", "--mode=stream", "--device=cpu", f"--video={video}",
               "--audio=-", "--output=-", f"--checkpoint={random_base_checkpoint['path']}",
               f"--results_root={tmp_path}"]
    proc = subprocess.run(command, input=pcm, capture_output=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    header, width, height, frames = _read_y4m(proc.stdout)
    assert header + b"\n" == y4m_header(480, 270)
    assert (width, height) == (480, 270) and len(frames) == n_video_frames_for_audio(len(wav))
    # a missing avatar: one line, exit 2, before any audio is read (run_talkingface.main in this
    # process: a second process would cost seconds of imports)
    import run_talkingface
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    code = run_talkingface.main(command[2:6] + ["--video=missing.mp4"] + command[7:])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("error: video not found")
