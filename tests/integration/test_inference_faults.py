"""Faults of inference runs: each is one line, found before long work, and leaves nothing behind
(bad checkpoint, unwritable or folder output, SIGTERM / Ctrl-C / kill -9, a full disk under the
frame cache, too short audio, odd sizes, several faces). Inputs are generated: the demo's
astronaut face, synthesized speech and random-init weights."""
import argparse
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

import run_talkingface
from talkingface.config import Config
from talkingface.data.dataprocess import demo
from talkingface.inference import pipeline
from talkingface.quick_start import infer_mode
from talkingface.inference.source import _RawFrameCache, pingpong_index
from talkingface.utils.tracking import FacePicker, track_faces
from builders import two_faces
from talkingface.model import build_network, load_network
from talkingface.utils.audio import save_wav
from talkingface.utils.checkpoint import save_checkpoint_file
from talkingface.utils.errors import CheckpointError, InputError
from talkingface.utils.files import remove_stale_temp_files, temp_name, write_text_atomic
from talkingface.utils.video import VideoWriter, check_output_path, iter_frames, probe_video
from paths import REPO_ROOT

REPO = str(REPO_ROOT)


@contextlib.contextmanager
def logged():
    """The messages logged under "talkingface" (INFO and up) while the block runs."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("talkingface")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def messages(records):
    return [r.getMessage() for r in records]


def face_frames(n, seed=0):
    photo = demo.astronaut_bgr()
    rng = np.random.default_rng(seed)
    return [demo.render_frame(photo, float(o), (0.0, 0.0), 256) for o in rng.uniform(0, 1, n)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 1 s 256x256 face clip, 3 s and 0.28 s of speech, 0.02 s of audio, a random-init Base checkpoint."""
    d = tmp_path_factory.mktemp("faults")
    paths = {"video": d / "face.mp4", "speech": d / "speech.wav", "short": d / "short.wav",
             "blip": d / "blip.wav", "base": d / "base.pth"}
    with VideoWriter(paths["video"], 25) as writer:
        for frame in face_frames(25):
            writer.write(frame)
    rng = np.random.default_rng(3)
    save_wav(paths["speech"], demo.synthesize_speech(3.0, rng))
    save_wav(paths["short"], demo.synthesize_speech(0.28, rng))
    save_wav(paths["blip"], demo.synthesize_speech(0.02, rng))
    torch.manual_seed(0)
    save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict(), "model": "HyperLipsBase"},
                         paths["base"])
    return paths


def infer_config(inputs, output, audio="speech", **overrides):
    return Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
        mode="infer", device="cpu", video=str(inputs["video"]), audio=str(inputs[audio]), output=str(output),
        checkpoint=str(inputs["base"]), **overrides))


def no_decoding(monkeypatch):
    """Make any decoding of the input video fail the test: a check must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the video was opened before the output path was checked")
    monkeypatch.setattr(pipeline, "FrameSource", refuse)


def cli(*args):
    return [sys.executable, os.path.join(REPO, "run_talkingface.py"), "--model=HyperLipsBase", "--mode=infer",
            "--dataset=demo", "--device=cpu", *map(str, args)]


def temp_files(folder):
    return sorted(name for name in os.listdir(folder) if ".tmp-" in name)


# ---------------------------------------------------------------- 3: a file that is not a checkpoint
def test_random_bytes_are_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "random.pth"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match="random.pth: it is not a PyTorch checkpoint") as info:
        load_network("HyperLipsBase", garbage)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)
    # a real torch file holding other Python objects: refused, without torch's advice to unpickle it
    pickled = tmp_path / "namespace.pth"
    torch.save({"args": argparse.Namespace(lr=1e-4)}, pickled)
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors") as info:
        load_network("HyperLipsBase", pickled)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- 4, 5: outputs that cannot be written
@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot create files in: read-only for a normal user; root, whom
    permissions do not stop, gets /sys (the kernel refuses new files there) when that holds."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    probe = "/sys/.talkingface_probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o600))
    except OSError:
        yield type(tmp_path)("/sys")
        return
    os.remove(probe)
    pytest.skip("running as root on a system where /sys is writable: no unwritable folder to test with")


def test_unwritable_output_folder_fails_before_decoding(inputs, unwritable_folder, monkeypatch):
    no_decoding(monkeypatch)
    with pytest.raises(InputError, match="cannot write to the output folder") as info:
        infer_mode.run_inference(infer_config(inputs, unwritable_folder / "out.mp4"))
    assert "\n" not in str(info.value)


def test_output_naming_a_folder_fails_before_decoding_and_leaves_nothing(inputs, tmp_path, monkeypatch):
    folder = tmp_path / "videos"
    folder.mkdir()
    no_decoding(monkeypatch)
    with pytest.raises(InputError, match="is an existing folder: give a file name") as info:
        infer_mode.run_inference(infer_config(inputs, folder))
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="is an existing folder"):  # any writer refuses it too
        VideoWriter(folder, 25)
    with pytest.raises(InputError, match="cannot write a '.txt' file"):
        infer_mode.run_inference(infer_config(inputs, tmp_path / "out.txt"))
    with pytest.raises(InputError, match="is also an input"):
        infer_mode.run_inference(infer_config(inputs, inputs["video"]))
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["videos"]


def test_cli_prints_one_line_for_a_folder_output(inputs, workdir, capsys):
    (workdir / "out").mkdir()
    rc = run_talkingface.main(["--model=HyperLipsBase", "--mode=infer", "--dataset=demo", "--device=cpu",
                               f"--video={inputs['video']}", f"--audio={inputs['speech']}", "--output=out",
                               f"--checkpoint={inputs['base']}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: output out is an existing folder")
    assert "Traceback" not in "\n".join(err) and os.listdir(workdir / "out") == []


def test_stream_output_is_checked_before_the_model_loads(inputs, workdir, unwritable_folder, capsys, monkeypatch):
    """--mode=stream: a .y4m file that cannot be written is one line and exit 2, before the model loads."""
    def refuse(self):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(pipeline.LipSyncer, "load", refuse)
    (workdir / "afile").write_text("not a folder")
    (workdir / "out").mkdir()
    cases = {"afile/x.y4m": "error: output afile/x.y4m: afile is a file, not a folder",
             "/proc/nonexistent_dir/x.y4m": "error: cannot write to the output folder /proc/nonexistent_dir (",
             f"{unwritable_folder}/x.y4m": f"error: cannot write to the output folder {unwritable_folder} (",
             "out": "error: output out is an existing folder: give a file name, e.g. out/out.y4m",
             "x.mp4": "error: output x.mp4: --mode=stream writes YUV4MPEG2 video; name the file .y4m"}
    for output, expected in cases.items():
        rc = run_talkingface.main(["--model=HyperLipsBase", "--mode=stream", "--dataset=demo", "--device=cpu",
                                   f"--video={inputs['video']}", f"--audio={inputs['speech']}", f"--output={output}",
                                   f"--checkpoint={inputs['base']}", f"--results_root={workdir / 'results'}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and err[-1].startswith(expected), (output, err[-3:])
        assert "Traceback" not in "\n".join(err)
    assert os.listdir(workdir / "out") == [] and not os.path.exists("/proc/nonexistent_dir")
    # so is an avatar cache folder that takes no files (/proc: not even root can create one there)
    rc = run_talkingface.main(["--model=HyperLipsBase", "--mode=stream", "--dataset=demo", "--device=cpu",
                               f"--video={inputs['video']}", f"--audio={inputs['speech']}", "--output=-",
                               "--avatar_cache=on", "--avatar_cache_dir=/proc", f"--checkpoint={inputs['base']}",
                               f"--results_root={workdir / 'results'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: avatar_cache_dir=/proc is not writable ("), err[-3:]


# ---------------------------------------------------------------- 6, 10: signals, stale temp files
def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "clip.mp4"
    stale = temp_name(out).name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    alive = temp_name(out).name  # this process: still writing
    other_host = stale.replace(".tmp-", ".tmp-otherhost-", 1)
    foreign = ".clip.tmp-12345678.mp4"  # not our pattern (no host and pid)
    for name in (stale, alive, other_host, foreign):
        (tmp_path / name).write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == [tmp_path / stale]
    assert sorted(os.listdir(tmp_path)) == sorted([alive, other_host, foreign])
    (tmp_path / stale).write_bytes(b"partial")
    check_output_path(out)  # every run checks its output path first, which cleans the folder
    assert not (tmp_path / stale).exists()
    # the atomic text/JSON writes (metrics, filelists) use the same names and clean the same way
    stale_json = temp_name(tmp_path / "metrics.json").name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")
    (tmp_path / stale_json).write_text("{")
    write_text_atomic(tmp_path / "metrics.json", "{}\n")
    assert (tmp_path / "metrics.json").read_text() == "{}\n" and not (tmp_path / stale_json).exists()


def test_frame_cache_has_no_name_to_leave_behind(tmp_path):
    cache = _RawFrameCache((4, 5, 3), directory=tmp_path)
    cache.append(np.full((4, 5, 3), 9, np.uint8))
    assert os.listdir(tmp_path) == [] and cache.read(0).mean() == 9
    cache.close()


@pytest.mark.parametrize("mode,word,rc", [("infer", "interrupted", 130), ("train", "interrupted", 130),
                                          ("infer", "terminated", 143)])
def test_interrupt_message_fits_the_mode(monkeypatch, capsys, mode, word, rc):
    def run(*args):
        if word == "terminated":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises in this thread long before
        raise KeyboardInterrupt

    import talkingface.quick_start
    monkeypatch.setattr(talkingface.quick_start, "run", run)
    assert run_talkingface.main(["--model=HyperLipsBase", f"--mode={mode}"]) == rc
    err = capsys.readouterr().err.strip()
    expected = {"infer": "no output written", "train": "checkpoints and finished clips are kept"}[mode]
    assert err.startswith(f"{word}: {expected}") and "\n" not in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def start_cli(inputs, output, tmp_dir, audio="speech"):
    env = dict(os.environ, TMPDIR=str(tmp_dir), OMP_NUM_THREADS="1")
    return subprocess.Popen(cli(f"--video={inputs['video']}", f"--audio={inputs[audio]}", f"--output={output}",
                                f"--checkpoint={inputs['base']}"),
                            cwd=tmp_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_output_to_start(proc, folder, timeout=240):
    """Until the writer's temp file appears (frames are being encoded), with the process still running."""
    deadline = time.monotonic() + timeout
    while not temp_files(folder):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no output started"
        time.sleep(0.1)


def cli_encoding(inputs, tmp_path):
    """A CLI run into tmp_path/out (TMPDIR tmp_path/tmp), returned once it is encoding frames."""
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    proc = start_cli(inputs, out_dir / "o.mp4", tmp_dir)
    wait_for_output_to_start(proc, out_dir)
    return proc, out_dir, tmp_dir


@pytest.mark.slow
def test_sigterm_during_inference_leaves_nothing(inputs, tmp_path):
    """SIGTERM unwinds like Ctrl-C (KeyboardInterrupt): the same cleanup, its own word and exit code."""
    proc, out_dir, tmp_dir = cli_encoding(inputs, tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last == ("terminated: no output written for the video in progress (a video appears only when its run "
                    "completes)"), err
    assert "Traceback" not in err
    assert os.listdir(out_dir) == [] and os.listdir(tmp_dir) == []  # no partial video, no frame cache


@pytest.mark.slow
def test_next_run_removes_what_kill_9_left(inputs, tmp_path):
    proc, out_dir, tmp_dir = cli_encoding(inputs, tmp_path)
    proc.kill()
    proc.communicate()
    left = temp_files(out_dir)
    assert len(left) == 1 and os.listdir(tmp_dir) == []  # the frame cache had no name
    proc = start_cli(inputs, out_dir / "o.mp4", tmp_dir, audio="short")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "removed 1 temp file(s) of interrupted runs" in err
    assert os.listdir(out_dir) == ["o.mp4"] and probe_video(out_dir / "o.mp4").n_frames == 7


# ---------------------------------------------------------------- 7: the disk fills under the frame cache
def test_full_disk_under_the_frame_cache_falls_back_to_decoding(tmp_path):
    video = tmp_path / "counter.mp4"
    with VideoWriter(video, 25, crf=0) as writer:
        for i in range(20):
            writer.write(np.full((48, 64, 3), 20 + 11 * i, np.uint8))
    # A child process whose files may not grow past 5 frames (the kernel answers EFBIG): the cache
    # of 20 frames fails mid-way, and the frames come from decoding again.
    script = f"""
import logging, resource, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stdout)
from talkingface.inference.source import FrameSource
resource.setrlimit(resource.RLIMIT_FSIZE, (5 * 48 * 64 * 3, resource.RLIM_INFINITY))
with FrameSource({str(video)!r}, chunk=3) as source:
    assert sum(1 for _ in source.scan()) == 20
    means = [round(float(frame.mean()), 1) for _, frame in source.play(50)]
print("MEANS", means)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, TMPDIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "frame cache could not be written (File too large)" in warnings[0]
    means = eval(proc.stdout.split("MEANS", 1)[1])
    # frame i is grey 20 + 11 * i (within 4 after x264 and yuv420p): the right frames, in ping-pong order
    assert all(abs(m - (20 + 11 * pingpong_index(k, 20))) < 4.5 for k, m in enumerate(means))
    assert os.listdir(tmp_path) == ["counter.mp4"]


def test_full_disk_under_the_output_stops_at_once(tmp_path):
    """ffmpeg dies at its file size limit: the writer says so at the next frame, not after the last."""
    script = f"""
import resource
import numpy as np
from talkingface.utils.video import VideoWriter
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
frames = np.random.default_rng(0).integers(0, 256, (8, 240, 320, 3), dtype=np.uint8)
writer = VideoWriter({str(tmp_path / "o.mp4")!r}, 25)
try:
    with writer:
        for i in range(1000):
            writer.write(frames[i % 8])
except Exception as exc:
    print(type(exc).__name__, exc, "| FRAMES", writer.frames_written)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    message, frames = proc.stdout.split("| FRAMES")
    assert message.startswith("InputError ffmpeg failed to write") and "SIGXFSZ (the file size limit" in message
    assert int(frames) < 200 and os.listdir(tmp_path) == []


# ---------------------------------------------------------------- 9: audio too short for a video
def test_audio_shorter_than_two_frames_is_refused(inputs, tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"lasts 0\.020 s: give at least 0\.08 s of audio") as info:
        infer_mode.run_inference(infer_config(inputs, tmp_path / "o.mp4", audio="blip"))
    assert "\n" not in str(info.value) and os.listdir(tmp_path) == []
    # why two frames: with -shortest, ffmpeg drops the video track of 0.02 s of audio and the
    # audio track of 0.05 s over a one-frame video; the writer refuses either result
    for seconds, missing in ((0.02, "video"), (0.05, "audio")):
        wav = tmp_path / f"{seconds}.wav"
        save_wav(wav, demo.synthesize_speech(seconds, np.random.default_rng(0)))
        with pytest.raises(InputError, match=f"would have no {missing} track"):
            with VideoWriter(tmp_path / "one.mp4", 25, audio_path=wav) as writer:
                writer.write(np.zeros((48, 64, 3), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["0.02.wav", "0.05.wav"]


# ---------------------------------------------------------------- 11: odd sizes
def test_odd_size_is_padded_by_repeating_the_edge_and_said(tmp_path):
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (479, 641, 3), dtype=np.uint8), (0, 0), 3)
    with logged() as records:
        with VideoWriter(tmp_path / "odd.mp4", 25, crf=0) as writer:
            writer.write(frame)
            writer.write(frame)
    assert [m for m in messages(records) if "641x479 are written as 642x480" in m]
    info = probe_video(tmp_path / "odd.mp4")
    assert (info.width, info.height) == (642, 480)
    out = next(iter_frames(tmp_path / "odd.mp4")).astype(int)
    assert np.abs(out[:479, :641] - frame).mean() < 3  # the input's pixels keep their places
    assert np.abs(out[479, :641] - out[478, :641]).mean() < 3  # the added row repeats the last one
    assert np.abs(out[:479, 641] - out[:479, 640]).mean() < 3  # (not black)


# ---------------------------------------------------------------- 12: several faces
def test_several_faces_log_the_box_that_is_lip_synced():
    picker = FacePicker()
    big, small = (0, 0, 200, 200, 0.9), (300, 0, 420, 120, 0.9)
    with logged() as records:
        assert picker([small]) == small[:4]
        assert picker([big, small]) == small[:4]  # the tracked face, not the larger newcomer
        assert picker([big, small]) == small[:4]
    lines = messages(records)
    assert lines == ["frame 1: 2 faces found; lip-syncing the one at x 300-420, y 0-120 px (the face tracked "
                     "so far), followed from frame to frame"]
    assert picker.frames_with_several == 2


def test_several_faces_in_a_video_are_counted():
    frames = [two_faces(face) for face in face_frames(3)]
    with logged() as records:
        boxes = track_faces(frames, 480, 256)
    lines = messages(records)
    first = [m for m in lines if "2 faces found" in m]
    assert len(first) == 1 and first[0].startswith("frame 0: 2 faces found; lip-syncing the one at x ")
    assert "several faces were found in 3 of 3 frames" in lines
    x1, x2 = map(int, re.search(r" at x (\d+)-(\d+), y ", first[0]).groups())
    assert abs(boxes[0][0] - x1) < 3 and abs(boxes[0][2] - x2) < 3 and x2 < 256  # the big face, on the left
