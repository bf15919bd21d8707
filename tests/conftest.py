"""Shared fixtures: the real sample clips, an isolated working directory, tiny configs."""
import os
import pathlib

# Idle OpenMP threads spin by default; with several test processes on two cores that made
# torch several times slower. Set before torch is first imported (children inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from talkingface.utils.runtime import keep_freed_memory  # noqa: E402

keep_freed_memory()  # as the entry points do

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT.parent / "shared" / "data" / "hyperlips_samples"


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
