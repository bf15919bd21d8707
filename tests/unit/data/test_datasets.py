"""SyncNetDataset and HyperLipsBaseDataset on a small preprocessed demo set."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from talkingface.config import Config
from talkingface.data.dataset.clip import Clip
from talkingface.data.dataset.hyperlipsbase_dataset import HyperLipsBaseDataset, reference_start
from talkingface.data.dataset.sampler import ResumableSampler, SeededItems
from talkingface.data.dataset.syncnet_dataset import SyncNetDataset, window_starts
from talkingface.utils.audio import mel_chunk
from talkingface.utils.registry import DATASETS


@pytest.fixture(scope="module")
def prepared(demo_base_data):
    return demo_base_data


def make(prepared, model="HyperLipsBase", **overrides):
    return Config(model=model, dataset="demo", config_dict=dict(prepared, **overrides))


@pytest.fixture
def window_log(monkeypatch):
    """Records every (clip id, start, count) window a dataset reads."""
    calls = []
    original = Clip.frames

    def frames(self, start, count, size=None):
        calls.append((self.id, start, count, self.n_frames))
        return original(self, start, count, size)

    monkeypatch.setattr(Clip, "frames", frames)
    return calls


def test_registered():
    assert DATASETS.get("SyncNetDataset") is SyncNetDataset
    assert DATASETS.get("HyperLipsBaseDataset") is HyperLipsBaseDataset


def test_lengths(prepared):
    config = make(prepared)
    train = HyperLipsBaseDataset(config, "train")
    assert len(train.clips) == 2 and len(train) == 2 * (50 - 5 + 1)
    assert len(HyperLipsBaseDataset(make(prepared, samples_per_epoch=100), "train")) == 100
    val = HyperLipsBaseDataset(config, "val")
    assert len(val.clips) == 1 and len(val) == config["val_windows_per_clip"]
    assert window_starts(50, 5, 8) == [0, 6, 13, 19, 26, 32, 39, 45]


def test_base_items(prepared, window_log):
    config = make(prepared)
    dataset = HyperLipsBaseDataset(config, "train")
    for index in range(20):
        window_log.clear()
        item = dataset[index]
        assert item["face"].shape == (6, 5, 128, 128) and item["gt"].shape == (3, 5, 128, 128)
        assert item["indiv_mels"].shape == (5, 1, 80, 16) and item["mel"].shape == (1, 80, 16)
        assert all(v.dtype == torch.float32 for v in item.values())
        face, gt = item["face"], item["gt"]
        assert 0 <= float(gt.min()) and float(gt.max()) <= 1 and float(gt.max()) > 0.5
        assert torch.all(face[:3, :, 64:] == 0)  # lower half of the target masked
        assert torch.equal(face[:3, :, :64], gt[:, :, :64])  # upper half kept
        assert float(face[3:, :, 64:].max()) > 0.5  # the reference is whole
        (target_clip, start, count, n), (ref_clip, ref_start, ref_count, _) = window_log
        assert target_clip == ref_clip and count == ref_count == 5
        assert 0 <= start <= n - 5 and 0 <= ref_start <= n - 5  # never outside the clip
        assert ref_start + 5 <= start or ref_start >= start + 5  # disjoint windows
        clip = next(c for c in dataset.clips if c.id == target_clip)
        assert np.allclose(gt.numpy(), clip.frames(start, 5, 128).transpose(3, 0, 1, 2) / 255.0, atol=1e-6)
        for t in range(5):
            assert np.array_equal(item["indiv_mels"][t, 0].numpy(), mel_chunk(clip.mel, start + t))
        assert torch.equal(item["mel"], item["indiv_mels"][0])


def test_validation_items_are_fixed_and_training_items_random(prepared):
    config = make(prepared)
    first, second = HyperLipsBaseDataset(config, "val"), HyperLipsBaseDataset(config, "val")
    for index in range(len(first)):
        a, b = first[index], second[index]
        assert all(torch.equal(a[k], b[k]) for k in a)
    train = HyperLipsBaseDataset(config, "train")
    assert not all(torch.equal(train[0]["gt"], train[0]["gt"]) for _ in range(3))


def test_reference_start_is_disjoint_and_covers_choices():
    rng = np.random.default_rng(0)
    import random
    r = random.Random(0)
    seen = set()
    for _ in range(2000):
        start = int(rng.integers(0, 16))
        ref = reference_start(20, 5, start, r)
        assert 0 <= ref <= 15 and (ref + 5 <= start or ref >= start + 5)
        seen.add(ref)
    assert seen == set(range(16))
    assert reference_start(10, 5, 0, r) == 5 and reference_start(10, 5, 5, r) == 0


def test_syncnet_items(prepared, window_log):
    config = make(prepared, model="SyncNet")
    dataset = SyncNetDataset(config, "train")
    labels = []
    for index in range(30):
        window_log.clear()
        item = dataset[index]
        assert item["face"].shape == (15, 64, 128) and item["mel"].shape == (1, 80, 16)
        assert item["label"].shape == (1,) and item["face"].dtype == torch.float32
        assert 0 <= float(item["face"].min()) and float(item["face"].max()) <= 1
        (clip_id, face_start, count, n), = window_log
        assert count == 5 and 0 <= face_start <= n - 5
        clip = next(c for c in dataset.clips if c.id == clip_id)
        label = float(item["label"])
        labels.append(label)
        # The mel chunk is cut at the positive window's start; a negative window starts elsewhere.
        matches = [s for s in range(n - 4) if np.array_equal(mel_chunk(clip.mel, s), item["mel"][0].numpy())]
        if label == 1:
            assert face_start in matches
        else:
            assert face_start not in matches or len(matches) > 1
        # Lower halves of the mirrored 128-px frames, frame-major BGR on channels.
        frames = clip.frames(face_start, 5, 128)[:, 64:, ::-1]
        expected = np.concatenate(list(frames), axis=2).transpose(2, 0, 1) / 255.0
        assert np.allclose(item["face"].numpy(), expected, atol=1e-6)
    assert 0 < sum(labels) < len(labels)


def test_syncnet_flip_is_a_setting_and_val_is_fixed(prepared, window_log):
    config = make(prepared, model="SyncNet", syncnet_hflip=False)
    dataset = SyncNetDataset(config, "val")
    assert [float(dataset[i]["label"]) for i in range(4)] == [1.0, 0.0, 1.0, 0.0]
    window_log.clear()
    item = dataset[0]
    (clip_id, face_start, _, _), = window_log
    clip = dataset.clips[0]
    frames = clip.frames(face_start, 5, 128)[:, 64:]
    expected = np.concatenate(list(frames), axis=2).transpose(2, 0, 1) / 255.0
    assert np.allclose(item["face"].numpy(), expected, atol=1e-6)
    again = SyncNetDataset(config, "val")
    for index in range(len(dataset)):
        assert all(torch.equal(dataset[index][k], again[index][k]) for k in ("face", "mel", "label"))


def test_dataloader_batches(prepared):
    loader = DataLoader(HyperLipsBaseDataset(make(prepared), "train"), batch_size=3, num_workers=0)
    batch = next(iter(loader))
    assert batch["face"].shape == (3, 6, 5, 128, 128) and batch["indiv_mels"].shape == (3, 5, 1, 80, 16)
    loader = DataLoader(SyncNetDataset(make(prepared, model="SyncNet"), "train"), batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert batch["face"].shape == (4, 15, 64, 128) and batch["label"].shape == (4, 1)


def test_resumable_sampler_continues_an_epoch_and_splits_ranks():
    sampler = ResumableSampler(10, seed=7)
    sampler.set_epoch(3)
    epoch = list(sampler)
    assert sorted(index for index, _ in epoch) == list(range(10)) and len({s for _, s in epoch}) == 10
    sampler.set_epoch(3, start=4)
    assert len(sampler) == 6 and list(sampler) == epoch[4:]          # the rest of the same epoch
    assert list(sampler) != epoch                                     # iterated again: the next epoch
    sampler.set_epoch(4)
    assert [i for i, _ in sampler] != [i for i, _ in epoch]
    ranks = [ResumableSampler(10, seed=7, rank=r, world_size=3) for r in range(3)]
    for rank in ranks:
        rank.set_epoch(3)
    shares = [list(rank) for rank in ranks]
    assert [len(share) for share in shares] == [4, 4, 4]             # padded like DistributedSampler
    assert sorted(set(i for share in shares for i, _ in share)) == list(range(10))
    assert [i for share in zip(*shares) for i, _ in share][:10] == [i for i, _ in epoch]


def test_training_items_do_not_depend_on_the_workers_that_make_them(prepared):
    dataset = SeededItems(SyncNetDataset(make(prepared, model="SyncNet"), "train"))
    sampler = ResumableSampler(12, seed=1)
    batches = []
    for workers in (0, 2):
        sampler.set_epoch(5, start=2)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)
        batches.append(list(loader))
    assert len(batches[0]) == 5
    for a, b in zip(*batches):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(batches[0][0]["face"], batches[0][1]["face"])
