"""Computing only the pasted rectangle: HyperLipsBase.generate(..., region=) and
HRDecoder.forward_region give, inside the rectangle, the full computation's pixels (fp32), and
region.pasted_source_rect covers every crop pixel that paste_face reads."""
import numpy as np
import pytest
import torch

from benchmarks.network_recipe import deterministic_state_dict
from talkingface.inference.paste import PASTE_THRESHOLD, mouth_mask, paste_face
from talkingface.model import build_network
from talkingface.model.audio_driven_talkingface import region as region_module
from talkingface.model.audio_driven_talkingface.hyperlipshr import HRDecoder
from talkingface.model.audio_driven_talkingface.region import Rect, mask_rect, pasted_source_rect
from talkingface.utils.errors import InputError

TOLERANCE = 1e-5
# (top, bottom, left, right) of a 128 px output: inside, touching one, two and all four borders,
# one row, one column, odd and even edges (the x2 upsamplings read different neighbours)
RECTS_128 = [(44, 92, 32, 94), (45, 91, 33, 93), (0, 17, 50, 61), (100, 128, 0, 9), (120, 128, 121, 128),
             (0, 128, 0, 128), (63, 64, 0, 128), (0, 128, 77, 78), (1, 127, 1, 127)]


def _seeded(network):
    network.load_state_dict(deterministic_state_dict(network.state_dict()))
    return network.eval().to(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def base_run():
    """A seeded HyperLipsBase, a 2-frame input and its full fp32 generate output."""
    model = _seeded(build_network("HyperLipsBase"))
    generator = torch.Generator().manual_seed(0)
    face = torch.rand(2, 6, 128, 128, generator=generator)
    face[:, :3, 64:] = 0  # the masked lower half, as inference feeds it
    audio = torch.randn(2, 1, 80, 16, generator=generator)
    with torch.inference_mode():
        features = model.encode_face(face)
        full = model.generate(audio, face, features)
    assert full.std() > 0.02  # the weights make crops that vary, so the comparison means something
    return model, (audio, face, features), full


def _region(model, inputs, rect):
    with torch.inference_mode():
        return model.generate(*inputs, region=rect)


def test_base_region_equals_the_full_output_inside_the_rectangle(base_run):
    model, inputs, full = base_run
    for top, bottom, left, right in RECTS_128:
        out = _region(model, inputs, (top, bottom, left, right))
        assert out.shape == (2, 3, bottom - top, right - left)
        assert (out - full[:, :, top:bottom, left:right]).abs().max() <= TOLERANCE, (top, bottom, left, right)


def test_base_region_without_the_receptive_field_margin_is_wrong(base_run, monkeypatch):
    """The check above can fail: planning each layer's window with no margin gives other pixels."""
    model, inputs, full = base_run
    monkeypatch.setattr(region_module.Rect, "expand", lambda self, margin, height, width: self)
    top, bottom, left, right = RECTS_128[0]
    out = _region(model, inputs, RECTS_128[0])
    assert (out - full[:, :, top:bottom, left:right]).abs().max() > 1e-3


def test_generate_without_region_is_the_full_computation(base_run):
    model, (audio, face, features), full = base_run
    with torch.inference_mode():
        for out in (model.generate(audio, face, features, None), model(audio, face)):
            assert out.shape == full.shape and (out - full).abs().max() <= TOLERANCE


@pytest.mark.parametrize("rescaling", [1, 2, 4])
def test_hr_decoder_region_equals_the_full_output_inside_the_rectangle(rescaling):
    # fully convolutional: a small non-square input keeps x4 fast; rectangles in output px
    hr = _seeded(HRDecoder(rescaling))
    x = torch.rand(2, 6, 40, 36, generator=torch.Generator().manual_seed(1))
    height, width = 40 * rescaling, 36 * rescaling
    with torch.inference_mode():
        full = hr(x)
        assert full.std() > 0.01
        for top, bottom, left, right in [(10, 31, 7, 30), (11, height - 3, 0, 5), (0, 1, width - 1, width),
                                         (height - 9, height, 3, width), (0, height, 0, width)]:
            out = hr.forward_region(x, (top, bottom, left, right))
            assert out.shape == (2, 3, bottom - top, right - left)
            assert (out - full[:, :, top:bottom, left:right]).abs().max() <= TOLERANCE, (top, bottom, left, right)


@pytest.mark.parametrize("region", [(10, 10, 0, 5), (0, 129, 0, 5), (-1, 5, 0, 5), (5, 1, 0, 5), "mouth", None])
def test_a_bad_region_is_one_input_error_line(base_run, region):
    model, inputs, _ = base_run
    if region is None:  # a face size the x2 upsamplings cannot be cut at
        audio, face, features = inputs
        with pytest.raises(InputError, match="multiples of 4"):
            model.generate(audio, face[:, :, :126], features, region=(0, 10, 0, 10))
        return
    with pytest.raises(InputError) as error:
        _region(model, inputs, region)
    assert len(str(error.value).splitlines()) == 1


def test_a_region_in_training_mode_is_one_input_error_line():
    hr = HRDecoder(1).train()
    with pytest.raises(InputError, match="eval mode"):
        hr.forward_region(torch.rand(1, 6, 16, 16), (0, 4, 0, 4))


def _masks():
    """Paste masks at 128 px: the fallback ellipse, one shifted right and down, and a hard-edged
    one (soft_mouth_mask with feather 0), where a pasted pixel can sit right at the edge."""
    ellipse = mouth_mask(None, 128, 128, 0.06)
    shifted = np.zeros_like(ellipse)
    shifted[9:, 6:] = ellipse[:-9, :-6]
    hard = np.zeros_like(ellipse)
    hard[61:97, 37:90] = 1
    return np.stack([ellipse, shifted, hard])


@pytest.mark.parametrize("rescaling", [1, 2])
@pytest.mark.parametrize("box_size", [(40, 52), (90, 90), (128, 128), (200, 170), (410, 400)])
def test_paste_reads_only_the_pasted_source_rect(rescaling, box_size):
    """Whatever a generated crop holds outside pasted_source_rect, paste_face writes the same frame:
    the rectangle is all that generate(region=) / forward_region must compute."""
    for mask in _masks():
        rect = pasted_source_rect(mask[None], [min(box_size)], PASTE_THRESHOLD, 128 * rescaling)
        assert (rect.bottom - rect.top) * (rect.right - rect.left) < 0.5 * (128 * rescaling) ** 2  # a real saving
        assert _paste_ignores_outside(mask, rect, box_size, rescaling), box_size


def test_the_paste_check_fails_without_the_resize_margins():
    """The check above can fail: the mask's own rectangle, without the margins, misses pixels."""
    misses = [not _paste_ignores_outside(mask, mask_rect(mask, PASTE_THRESHOLD).scaled(rescaling), box, rescaling)
              for mask in _masks() for box in [(40, 52), (410, 400)] for rescaling in (1, 2)]
    assert any(misses)


def _paste_ignores_outside(mask, rect, box_size, rescaling):
    """Whether paste_face writes the same frame for two crops that agree on `rect` only."""
    import cv2

    width, height = box_size
    out_size = 128 * rescaling
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (height + 20, width + 30, 3), dtype=np.uint8)
    box = (15, 10, 15 + width, 10 + height)
    generated = rng.integers(0, 256, (out_size, out_size, 3), dtype=np.uint8)
    box_mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)  # as render.py
    pasted = []
    for outside in (0, 255):
        crop = np.full_like(generated, outside)
        crop[rect.top:rect.bottom, rect.left:rect.right] = generated[rect.top:rect.bottom, rect.left:rect.right]
        pasted.append(paste_face(frame.copy(), box, crop, box_mask))
    assert not np.array_equal(pasted[0], frame)
    return np.array_equal(pasted[0], pasted[1])


def test_mask_rect_is_the_union_over_the_batch_grown_and_clipped():
    masks = np.zeros((2, 10, 12), np.float32)
    masks[0, 2, 3] = 0.5
    masks[1, 6, 9] = 0.002
    assert mask_rect(masks, PASTE_THRESHOLD) == Rect(2, 7, 3, 10)
    assert mask_rect(masks, 0.01) == Rect(2, 3, 3, 4)
    assert mask_rect(masks, PASTE_THRESHOLD, margin=3) == Rect(0, 10, 0, 12)
    assert mask_rect(np.zeros((10, 12)), PASTE_THRESHOLD) is None
