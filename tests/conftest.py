"""Shared fixtures: the real sample clips, an isolated working directory, tiny configs."""
import os
import pathlib

# Idle OpenMP threads spin by default; with several test processes on two cores that made
# torch several times slower. Set before torch is first imported (children inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from talkingface.utils.runtime import keep_freed_memory  # noqa: E402
from paths import REPO_ROOT

keep_freed_memory()  # as the entry points do

SAMPLES_DIR = REPO_ROOT.parent / "shared" / "data" / "hyperlips_samples"


# The files that take longest start first, so that the workers (--dist loadfile: a file per worker
# at a time) finish together instead of one running the last long file alone.
LONGEST_FIRST = ("test_own_expert_offsets.py", "test_gpu_check.py", "test_train_base.py", "test_train_ddp.py",
                 "test_evaluate_sharded.py", "test_train_resume.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def samples_dir():
    """The real 720p sample clips beside the checkout; the test is skipped when they are absent."""
    if not (SAMPLES_DIR / "video1.mp4").is_file():
        pytest.skip(f"real sample clips not found at {SAMPLES_DIR}")
    return SAMPLES_DIR


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run inside an empty folder, so dataset/, checkpoints/ and results/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _few_threads():
    """One torch thread: the tensors here are tiny, and tests that spawn workers (preprocessing,
    DDP ranks, ffmpeg) must not fight a second busy thread on a two-core machine."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_logger():
    """init_logger() binds handlers to the current stderr; drop them so no test logs into a closed stream."""
    yield
    import logging
    logger = logging.getLogger("talkingface")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="session")
def lipsync_media(samples_dir, tmp_path_factory):
    """Tiny inputs for lip-sync runs: a 0.6 s 480x270 cut of a sample clip (25 fps, with sound),
    0.8 s of its driving audio as wav, and 1 s of noise with no face in it."""
    import subprocess

    import numpy as np

    from talkingface.utils.ffmpeg import ffmpeg_exe

    folder = tmp_path_factory.mktemp("lipsync_media")
    paths = {"video": folder / "face.mp4", "audio": folder / "speech.wav", "noface": folder / "noface.mp4"}

    def ffmpeg(*args, stdin=None):
        subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *map(str, args)],
                       input=stdin, check=True)

    ffmpeg("-i", samples_dir / "video1.mp4", "-ss", 3, "-t", 0.6, "-vf", "scale=480:270", "-r", 25,
           "-c:v", "libx264", "-crf", 14, "-c:a", "aac", paths["video"])
    ffmpeg("-i", samples_dir / "video1_drive.wav", "-t", 0.8, paths["audio"])
    noise = np.random.default_rng(0).integers(0, 256, (25, 120, 160, 3), dtype=np.uint8)
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", "160x120", "-r", 25, "-i", "pipe:0",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", paths["noface"], stdin=noise.tobytes())
    return paths


@pytest.fixture(scope="session")
def four_frame_clip(lipsync_media, tmp_path_factory):
    """(4-frame video file of the sample face, 0.36 s of its driving audio as float32 samples)."""
    from talkingface.utils.audio import load_audio
    from talkingface.utils.video import VideoWriter, read_frames
    path = str(tmp_path_factory.mktemp("four_frames") / "avatar.mp4")
    with VideoWriter(path, 25) as writer:
        for frame in read_frames(lipsync_media["video"], fps=25)[:4]:
            writer.write(frame)
    return path, load_audio(lipsync_media["audio"])[:5760]


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def make_config():
    """The config factory: make_config(model, root=None, dataset="demo", **overrides) (builders.py)."""
    from builders import make_config
    return make_config


@pytest.fixture
def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    from builders import free_port
    return free_port()


@pytest.fixture(scope="session")
def _random_expert_file(tmp_path_factory):
    import torch

    from talkingface.model import build_network
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file

    torch.manual_seed(1)
    path = checkpoint_path(str(tmp_path_factory.mktemp("random_expert")), 1)
    save_checkpoint_file({"state_dict": build_network("SyncNet").state_dict(), "global_step": 1, "model": "SyncNet"},
                         path)
    return path


@pytest.fixture
def random_expert(_random_expert_file):
    """random_expert(root): a random-init SyncNet checkpoint (written once per session) linked where
    HyperLipsBase looks for its expert, root/checkpoints/demo/SyncNet/; returns that path."""
    def install(root):
        folder = pathlib.Path(root) / "checkpoints" / "demo" / "SyncNet"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / os.path.basename(_random_expert_file)
        link.symlink_to(_random_expert_file)
        return str(link)
    return install


@pytest.fixture(scope="session")
def killed_writer_temp_name():
    """temp_name(path) as a writer killed mid-write (kill -9) left it: the PID of a process that is gone."""
    import subprocess
    import sys

    from talkingface.utils.files import temp_name

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return lambda path: temp_name(path).name.replace(f"-{os.getpid()}-", f"-{dead.pid}-")


@pytest.fixture(scope="session")
def random_base_checkpoint(tmp_path_factory):
    """checkpoints/demo/HyperLipsBase/checkpoint_step000000001.pth with random-init weights, in a
    folder of its own (its parent of `checkpoints/` is returned too as ["root"])."""
    import torch

    from talkingface.model import build_network
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file

    root = tmp_path_factory.mktemp("random_ckpt")
    folder = root / "checkpoints" / "demo" / "HyperLipsBase"
    torch.manual_seed(0)
    path = checkpoint_path(str(folder), 1)
    save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict(),
                          "model": "HyperLipsBase", "global_step": 1}, path)
    return {"path": path, "root": root}


@pytest.fixture(scope="session")
def demo_base_data(tmp_path_factory):
    """A 3-clip demo set (2 s clips: 2 train, 1 val) generated and Base-preprocessed once per
    session; returns the config values that point at it (pass them to Config or as --key=value)."""
    from talkingface.config import Config
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor

    tmp = tmp_path_factory.mktemp("demo_base_data")
    values = dict(data_root=str(tmp / "data"), preprocessed_root=str(tmp / "pre"), num_preprocess_workers=1,
                  demo_num_clips=3, demo_clip_seconds=2.0)
    HyperLipsBasePreprocessor(Config(model="HyperLipsBase", dataset="demo", config_dict=values)).run()
    return values


@pytest.fixture(scope="session")
def demo_split_data(tmp_path_factory):
    """A 3-clip demo set (2 s clips: 1 train, 1 val, 1 test) generated and Base-preprocessed once
    per session; returns the config values that point at it."""
    from talkingface.config import Config
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor

    tmp = tmp_path_factory.mktemp("demo_split_data")
    values = dict(data_root=str(tmp / "data"), preprocessed_root=str(tmp / "pre"), num_preprocess_workers=1,
                  demo_num_clips=3, demo_clip_seconds=2.0, val_ratio=0.34, test_ratio=0.34)
    HyperLipsBasePreprocessor(Config(model="HyperLipsBase", dataset="demo", config_dict=values)).run()
    return values
