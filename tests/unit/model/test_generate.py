"""The one generator loop (model.generate.generate_faces): what it computes, and that inference's
renderer, the HR training data and the learning check all run the generator through it."""
import numpy as np
import pytest
import torch

from builders import FakeClip
from talkingface.model import create
from talkingface.model.generate import generate_faces
from talkingface.model.inputs import masked_input, to_uint8_images


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return create("HyperLipsBase").network.eval()


def test_the_loop_is_the_generator_on_masked_crops_batch_by_batch(base):
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 255, (3, 128, 128, 3), dtype=np.uint8)
    references = crops[::-1].copy()
    chunks = rng.standard_normal((3, 80, 16)).astype(np.float32)
    faces = generate_faces(base, crops, references, chunks, device=torch.device("cpu"), batch_size=3)
    batched = generate_faces(base, crops, references, chunks, device=torch.device("cpu"), batch_size=2)
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        direct = to_uint8_images(base(torch.from_numpy(chunks)[:, None], masked_input(to_tensor(crops),
                                                                                       to_tensor(references))))
    assert faces.shape == (3, 128, 128, 3) and faces.dtype == np.uint8
    assert np.array_equal(faces, direct)
    # batches of 2 (+ 1): other kernels for another batch shape, the same faces to a rounding
    assert np.abs(batched.astype(int) - faces).max() <= 1
    # the HR decoder on top gets hr_input of the Base faces, and sets the output size
    seen = []
    hr = create("HRDecoder", rescaling=2).network.eval()
    out = generate_faces(base, crops, references, chunks, device=torch.device("cpu"), batch_size=2, pad=True, hr=hr,
                         hr_input=lambda f: seen.append(len(f)) or np.zeros((len(f), 6, 128, 128), np.float32))
    assert out.shape == (3, 256, 256, 3) and seen == [2, 1]


@pytest.mark.slow  # builds a Base trainer (generator + discriminator)
def test_inference_hr_data_and_learning_check_call_the_one_loop(base, make_config, workdir, monkeypatch):
    from talkingface.data.dataprocess import hyperlipshr_process
    from talkingface.inference import render
    from talkingface.inference.settings import InferSettings
    from talkingface.trainer import hyperlipsbase_trainer

    callers = []

    def recording(module, name):
        real = module.generate_faces
        monkeypatch.setattr(module, "generate_faces", lambda *a, **k: callers.append(name) or real(*a, **k))

    recording(hyperlipshr_process, "hr data")
    recording(hyperlipsbase_trainer, "learning check")
    recording(render, "inference")
    assert hyperlipshr_process.generate_hyper_frames(base, FakeClip(3, side=128), "cpu", 2).shape == (3, 128, 128, 3)
    trainer = hyperlipsbase_trainer.HyperLipsBaseTrainer(make_config("HyperLipsBase", workdir, sync_weight=0,
                                                                     eval_batch_size=1, mode="evaluate"))
    assert trainer.generate_clip(FakeClip(3, side=128)).shape == (3, 128, 128, 3)

    frame = np.full((128, 128, 3), 90, np.uint8)
    settings = InferSettings.from_config(make_config("HyperLipsBase"), infer_batch_size=2, infer_bf16=False)
    renderer = render.LipSyncRenderer(base, None, np.float32([[0, 0, 128, 128]]), (128, 128), settings,
                                      mel=np.zeros((80, 40), np.float32))
    try:
        assert len(renderer.render([(0, 0, frame.copy()), (1, 0, frame.copy())])) == 2
    finally:
        renderer.close()
    assert callers == ["hr data", "learning check", "inference"]
