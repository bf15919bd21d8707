"""Shared fixtures: the real sample clips, an isolated working directory, tiny configs."""
import os
import pathlib

import pytest

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
    """Keep torch from oversubscribing the CI machine's two cores when pytest runs workers."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
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
