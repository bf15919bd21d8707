"""Issue 27's check with the project's own expert: a SyncNet trained on the generated demo set by
the trainer `python run_talkingface.py --model=SyncNet --dataset=demo` runs, taken by the real
offset detector through sync_expert_path, finds audio shifted by +5 and -7 frames and
av_offset=fix removes them (tests/unit/data/test_av_offset.py checks the same arithmetic with a
hand-made stand-in for the network)."""
import json
import os
import shutil

import pytest

from talkingface.data.dataprocess import av_offset
from talkingface.model.av_sync import shift_audio
from talkingface.utils.checkpoint import latest_checkpoint

# Training stops at the first validation at or above EXPERT_MIN_ACCURACY: step 40, 0.875 on the 16
# windows of the validation clip (`pytest -s tests/integration/test_own_expert_offsets.py` prints it;
# the file takes ~110 s of one core). Validating every 10 steps (`python run_talkingface.py
# --model=SyncNet --dataset=demo --demo_num_clips=3 --demo_clip_seconds=2.0 --num_workers=0
# --val_windows_per_clip=16 --eval_interval=10 --max_steps=120 --learning_rate=1e-3 --batch_size=16`): 0.69 at
# step 30. With --batch_size=8 it touched 0.81 at step 40 and fell to 0.38 at step 60; with
# --learning_rate=5e-4 --batch_size=8 it stayed at or below 0.75 up to step 120.
# Other seeds need longer (seed 1: step 60, 0.875; seed 2: step 100, 0.9375; both then found every
# shift exactly), and another CPU's kernels follow another path: the cap leaves room for that.
EXPERT_TRAINING = dict(learning_rate=1.0e-3, batch_size=16, max_steps=160, eval_interval=20, eval_batch_size=16,
                       val_windows_per_clip=16, log_interval=20, checkpoint_interval=1000,
                       evaluate_after_training=False, log_level="WARNING")


@pytest.fixture(scope="session")
def demo_expert(tmp_path_factory, demo_base_data):
    """The project's SyncNet trained on the session's demo set (2 train clips, 1 val clip) until its
    validation accuracy reaches av_offset.EXPERT_MIN_ACCURACY: {"path", "accuracy", "step"}."""
    import torch

    from talkingface.quick_start.quick_start import build_config, build_trainer, preprocess

    root = tmp_path_factory.mktemp("own_expert")
    values = dict(demo_base_data, device="cpu", num_workers=0, checkpoint_root=str(root / "checkpoints"),
                  results_root=str(root / "results"), **EXPERT_TRAINING)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # session fixtures are set up before the per-test one-thread fixture
    try:
        config = build_config("SyncNet", "demo", config_dict=values)   # seeds torch, numpy and random
        preprocess(config)                                             # the demo set is current: nothing to do
        trainer = build_trainer(config)
        try:
            trainer.fit(should_stop=lambda: trainer.last_validation.get("accuracy", 0.0)
                        >= av_offset.EXPERT_MIN_ACCURACY)
        finally:
            trainer.close()
    finally:
        torch.set_num_threads(threads)
    path = latest_checkpoint(os.path.join(config["checkpoint_root"], "demo", "SyncNet"))
    print(f"\nown expert: step {trainer.global_step}, validation {trainer.last_validation}")
    return {"path": path, "accuracy": trainer.last_validation.get("accuracy"), "step": trainer.global_step}


def _clips(root):
    """(folder, meta, crops, audio) of every preprocessed clip of `root`, in name order."""
    clips = []
    for name in sorted(n for n in os.listdir(root) if os.path.isfile(os.path.join(root, n, "meta.json"))):
        folder = os.path.join(root, name)
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        clips.append((folder, meta, av_offset.read_crops(folder, meta["n_frames"]),
                      av_offset._read_wav(os.path.join(folder, "audio.wav"))))
    return clips


@pytest.mark.slow
def test_our_trained_expert_finds_known_shifts_and_fix_removes_them(demo_expert, demo_base_data, make_config,
                                                                   tmp_path):
    assert demo_expert["accuracy"] >= av_offset.EXPERT_MIN_ACCURACY, demo_expert
    values = dict(demo_base_data, syncnet_v2_path=str(tmp_path / "none.model"),
                  sync_expert_path=demo_expert["path"])
    detector = av_offset.OffsetDetector(make_config("HyperLipsBase", tmp_path, av_offset="detect", **values))
    assert detector.method == "SyncNet"               # auto: our expert, taken for its accuracy
    clips = _clips(demo_base_data["preprocessed_root"])
    assert len(clips) == 3                                # 2 training clips and the validation clip
    for folder, _, crops, wav in clips:
        for lead in (5, -7):   # sound 5 frames early, 7 late: syncnet_python's offsets +5, -7
            found = detector.estimate(crops, shift_audio(wav, -lead))
            print(os.path.basename(folder), lead, found)
            assert abs(found["offset"] - lead) <= 1, (os.path.basename(folder), lead, found)

    source, meta, crops, wav = clips[-1]                  # the validation clip, its sound 7 frames late
    clip_dir = str(tmp_path / "clip")
    shutil.copytree(source, clip_dir)
    av_offset._write_clip_audio(clip_dir, shift_audio(wav, 7))
    # This expert's dips are shallower than the default bar's (0.3): its confidence was 0.16 to 0.19 on
    # every estimate here (pytest -s prints the record)
    fix = av_offset.OffsetDetector(make_config("HyperLipsBase", tmp_path, av_offset="fix",
                                               av_offset_min_confidence=0.1, **values))
    record = av_offset.update_clip(clip_dir, fix, meta)
    print(f"fix record: {record}")
    assert abs(record["offset"] + 7) <= 1 and record["applied"] == record["offset"], record
    redetected = fix.estimate(crops, av_offset._read_wav(os.path.join(clip_dir, "audio.wav")))
    print(f"re-detected after the fix: {redetected}")
    assert abs(redetected["offset"]) <= 1
