"""A file a user gives is read as self-contained media only (talkingface/utils/ffmpeg.py).

An HLS playlist or a concat list names other files; here they name a FIFO, which records whether
anything opened it. Without the guards ffmpeg and OpenCV open the FIFO (and block on it); with
them every entry point refuses the list in one line and the FIFO is never opened (permission
bits could not show this: the tests run as root).
"""
import ast
import os
import shutil
import threading

import pytest

from talkingface.utils import audio as audio_io
from talkingface.utils import video as video_io
from talkingface.utils.errors import InputError
from paths import REPO_ROOT

REFUSED = "was refused: it is not a self-contained video or audio file"


class Fifo:
    """A FIFO whose writer side waits in a thread: `opened` turns True when anyone opens it to read
    (the writer then closes at once and waits again, so every reader sees an empty file instead of
    hanging, and a regression fails instead of blocking the suite)."""

    def __init__(self, path):
        os.mkfifo(path)
        self.path, self.opened, self._closing = str(path), False, False
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self):
        while not self._closing:
            fd = os.open(self.path, os.O_WRONLY)  # returns once a reader has the FIFO open
            self.opened = self.opened or not self._closing
            os.close(fd)

    def close(self):
        self._closing = True
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # lets the waiting writer go
        self._thread.join(10)
        os.close(fd)


@pytest.fixture
def lists(tmp_path):
    """{"hls": an .m3u8 naming the FIFO, "concat": a concat list named clip.mp4 naming it, ...}."""
    fifo = Fifo(tmp_path / "secret.ts")  # hls reads segments with media extensions only
    hls = tmp_path / "playlist.m3u8"
    hls.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\nfile://{fifo.path}\n#EXT-X-ENDLIST\n")
    concat = tmp_path / "clip.mp4"  # ffmpeg detects a concat list by its first line, whatever its name
    concat.write_text("ffconcat version 1.0\nfile 'secret.ts'\n")
    yield {"hls": str(hls), "concat": str(concat), "fifo": fifo}
    fifo.close()
    assert not fifo.opened, "a file named by a playlist was opened"


@pytest.mark.parametrize("kind", ["hls", "concat"])
def test_every_reader_refuses_lists_without_opening_what_they_name(lists, kind, tmp_path):
    path = lists[kind]
    readers = [video_io.probe_video, audio_io.load_audio, audio_io.has_audio_stream,
               lambda p: next(iter(video_io.iter_frames(p, fps=25))), lambda p: video_io.read_frames(p),
               lambda p: video_io.VideoWriter(tmp_path / "out.mp4", 25, audio_path=p)]
    for read in readers:
        with pytest.raises(InputError) as info:
            read(path)
        message = str(info.value)
        assert "\n" not in message
        # the concat list named .mp4 is not even detected as one by name: refused or unreadable
        assert REFUSED in message if kind == "hls" else ("refused" in message or "Cannot" in message), message
    assert not (tmp_path / "out.mp4").exists()


def test_plain_media_still_read(lipsync_media):
    assert video_io.probe_video(lipsync_media["video"]).n_frames == 15
    assert len(video_io.read_frames(lipsync_media["video"], fps=25)) == 15
    assert abs(len(audio_io.load_audio(lipsync_media["audio"])) - 12800) <= 16


def test_opencv_capture_refuses_lists_itself(lists):
    """The second guard: OpenCV's own FFmpeg refuses the list even when no probe runs first."""
    from talkingface.utils.ffmpeg import open_capture

    for kind in ("hls", "concat"):
        capture = open_capture(lists[kind])
        assert not capture.isOpened()
        capture.release()


@pytest.fixture
def cli(monkeypatch, capsys):
    """cli(*args, cwd=folder) -> (exit status, stderr) of `run_talkingface.py --device=cpu args...`,
    run_talkingface.main in this process (a process of its own would cost seconds of imports)."""
    from run_talkingface import main

    def run(*args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(["--device=cpu", *args])
        return code, capsys.readouterr().err
    return run


def test_cli_modes_refuse_lists_in_one_line(lists, lipsync_media, random_base_checkpoint, tmp_path, cli):
    checkpoint = f"--checkpoint={random_base_checkpoint['path']}"
    runs = [
        ("--mode=infer", f"--video={lists['hls']}", f"--audio={lipsync_media['audio']}", "--output=o.mp4"),
        ("--mode=infer", f"--video={lipsync_media['video']}", f"--audio={lists['concat']}", "--output=o.mp4"),
        ("--mode=stream", f"--video={lists['hls']}", f"--audio={lipsync_media['audio']}", "--output=o.y4m"),
    ]
    for args in runs:
        rc, err = cli("--model=HyperLipsBase", "--dataset=demo", checkpoint, *args, cwd=tmp_path)
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2 and lines[-1].startswith("error: ") and "refused" in lines[-1], err[-2000:]
        assert "Traceback" not in err
    assert not any(tmp_path.glob("o.*"))


def test_preprocessing_skips_a_list_in_the_data_folder(tmp_path, cli):
    data = tmp_path / "data" / "M001"
    data.mkdir(parents=True)
    fifo = Fifo(data / "segment.bin")  # not a video name: preprocessing does not list it itself
    try:
        (data / "clip.mp4").write_text("ffconcat version 1.0\nfile 'segment.bin'\n")
        rc, err = cli("--model=HyperLipsBase", "--dataset=MEAD", "--mode=preprocess", f"--data_root={tmp_path / 'data'}",
                       f"--preprocessed_root={tmp_path / 'pre'}", "--num_preprocess_workers=1", cwd=tmp_path)
    finally:
        fifo.close()
    assert not fifo.opened
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error: no usable clip"), err[-2000:]
    assert "skipped M001/clip.mp4: unreadable (Video file clip.mp4 was refused" in err


def test_api_and_app_refuse_lists(lists, lipsync_media, random_base_checkpoint, tmp_path):
    from talkingface import LipSync
    from talkingface.app import App, ModelChoice
    from talkingface.config import Config

    lipsync = LipSync("HyperLipsBase", checkpoint=random_base_checkpoint["path"], dataset="demo", device="cpu")
    wav = audio_io.load_audio(lipsync_media["audio"])
    calls = [lambda: lipsync(lists["hls"], wav), lambda: lipsync(lipsync_media["video"], lists["hls"]),
             lambda: lipsync.stream(lists["hls"]), lambda: lipsync.run(lists["concat"], lipsync_media["audio"])]
    for call in calls:
        with pytest.raises(InputError, match="refused|Cannot read"):
            call()

    app = App(Config("HyperLipsBase", "demo", config_dict={"mode": "app", "device": "cpu", "checkpoint_root": "none"}),
              str(tmp_path / "app"), [ModelChoice("Base", "HyperLipsBase", "demo", random_base_checkpoint["path"])])
    uploads = tmp_path / "app" / "uploads" / "0123abcd"
    uploads.mkdir(parents=True)
    video = shutil.copy(lists["hls"], uploads / "face.m3u8")
    audio = shutil.copy(lipsync_media["audio"], uploads / "speech.wav")
    output, status = app.generate(video, None, False, audio, "Base", "", "", 4, "float32")
    assert output is None and status.startswith("error: Video file face.m3u8 was refused"), status


def test_user_files_are_decoded_only_through_the_guarded_helpers():
    """No module opens a user's file with cv2.VideoCapture or an ffmpeg `-i` of its own."""
    package = REPO_ROOT / "talkingface"
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "ffmpeg.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "VideoCapture":
                offenders.append(f"{path.name}:{node.lineno} VideoCapture")
            if isinstance(node, ast.List) and any(isinstance(e, ast.Constant) and e.value == "-i" for e in node.elts):
                following = node.elts[[getattr(e, "value", None) for e in node.elts].index("-i") + 1]
                if not (isinstance(following, ast.Constant) and str(following.value).startswith("pipe:")):
                    offenders.append(f"{path.name}:{node.lineno} ffmpeg -i")
    assert not offenders, offenders
