"""Sharded evaluation: under torchrun every rank scores its share of the clips (longest first, dealt
in turn) and rank 0 writes the metrics.json one process writes, plus world_size; a rank that fails
makes every rank fail instead of leaving them waiting. The torchrun runs, and the one-process runs
they are compared with, use the reduced-width networks of tests/narrow_networks.py (sharding is
plumbing)."""
import json
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

import narrow_networks
from builders import free_port
from test_evaluator_pipeline import FakeSyncer, TinyFeatures, _write_clip
from test_train_ddp import _torchrun

CLIP_FRAMES = {"a": 6, "b": 12, "c": 9}      # the split's order; scored longest first: b, c, a


class ClipSyncer(FakeSyncer):
    """FakeSyncer with noise on every clip: the same noise whichever rank or call order runs it."""

    def __init__(self, fail=False):
        super().__init__(noisy_calls=range(100))
        self.fail = fail

    def run(self, source, wav, output):
        if self.fail:
            from talkingface.utils.errors import InputError
            raise InputError("this rank's clip is broken")
        return super().run(source, wav, output)


def _synthetic_split(workdir):
    """Three clips of different lengths in the val split, and a tiny FID feature net (fid.pt)."""
    root = os.path.join(workdir, "dataset/demo/preprocessed")
    for seed, (clip_id, frames) in enumerate(CLIP_FRAMES.items()):
        _write_clip(root, clip_id, frames, seed=seed)
    os.makedirs(f"{root}/filelists")
    with open(f"{root}/filelists/val.txt", "w") as f:
        f.write("".join(f"{clip_id}\n" for clip_id in CLIP_FRAMES))
    torch.manual_seed(0)
    torch.jit.script(TinyFeatures()).save(os.path.join(workdir, "fid.pt"))


def _config(results):
    from talkingface.config import Config
    return Config(model="HyperLipsBase", dataset="demo", config_dict={
        "device": "cpu", "infer_bf16": False, "metrics": ["PSNR", "SSIM", "FID"], "inception_path": "fid.pt",
        "eval_num_sample_videos": 2, "results_root": results})


def _rank_main(rank, world_size, port, workdir, failing_rank):
    """One rank: evaluate the synthetic split, record what it returned or raised in rank<r>.json."""
    os.chdir(workdir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from talkingface.evaluator import Evaluator
    from talkingface.utils import distributed as dist_utils
    from talkingface.utils.errors import TalkingFaceError
    config = _config("sharded")
    config["device"] = dist_utils.setup_distributed(config["device"])
    syncer = ClipSyncer(fail=rank == failing_rank)
    try:
        results = Evaluator(config).evaluate(syncer, split="val")
        outcome = {"returned": results is not None}
    except Exception as exc:
        outcome = {"raised": type(exc).__name__, "message": str(exc),
                   "user_error": isinstance(exc, TalkingFaceError)}
    outcome["requested"] = syncer.requested
    with open(os.path.join(workdir, f"rank{rank}.json"), "w") as f:
        json.dump(outcome, f)
    dist_utils.cleanup_distributed()


def _spawn_two_ranks(workdir, failing_rank=-1, timeout=120):
    """Both ranks' outcomes; a hang fails the test after `timeout` seconds."""
    context = mp.spawn(_rank_main, args=(2, free_port(), str(workdir), failing_rank), nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"2 ranks did not finish evaluating within {timeout} s (a hang?)")
    return [json.loads((workdir / f"rank{r}.json").read_text()) for r in range(2)]


def _comparable(results):
    """metrics.json without what may differ between runs: the time taken and the number of ranks."""
    return {k: v for k, v in results.items() if k not in ("seconds", "world_size")}


def test_deal_gives_the_longest_clips_first_in_turn():
    from talkingface.evaluator.evaluator import deal

    class Clip:
        def __init__(self, clip_id, n_frames):
            self.id, self.n_frames = clip_id, n_frames

    clips = [Clip("a", 6), Clip("b", 12), Clip("c", 9), Clip("d", 12), Clip("e", 3)]
    assert [[c.id for c in deal(clips, r, 2)] for r in range(2)] == [["b", "c", "e"], ["d", "a"]]
    assert [c.id for c in deal(clips, 0, 1)] == ["b", "d", "c", "a", "e"]
    # with a frame cap the first four are equally long: the split's order decides
    assert [[c.id for c in deal(clips, r, 3, max_frames=6)] for r in range(3)] == [["a", "d"], ["b", "e"], ["c"]]


@pytest.mark.slow
def test_two_ranks_write_the_metrics_of_one_process(workdir):
    """Per-clip values, means (FID over all frames included), clip order, provenance and sample
    videos as one process gives them."""
    from talkingface.evaluator import Evaluator
    _synthetic_split(workdir)
    single = Evaluator(_config("single")).evaluate(ClipSyncer(), split="val")

    outcomes = _spawn_two_ranks(workdir)
    assert [o["returned"] for o in outcomes] == [True, False]
    assert [o["requested"] for o in outcomes] == [[12, 6], [9]]      # b, a on rank 0; c on rank 1
    folder = os.path.join("sharded", "demo", "HyperLipsBase")
    with open(os.path.join(folder, "metrics.json")) as f:
        sharded = json.load(f)
    with open(os.path.join("single", "demo", "HyperLipsBase", "metrics.json")) as f:
        assert _comparable(sharded) == _comparable(json.load(f))
    assert list(sharded["per_clip"]) == ["a", "b", "c"] and sharded["per_clip"] == single["per_clip"]
    assert sharded["mean"] == single["mean"] and sharded["mean"]["FID-frames"] == 27
    assert sharded["world_size"] == 2 and single["world_size"] == 1
    assert sorted(os.listdir(os.path.join(folder, "samples"))) == ["a.mp4", "b.mp4"]


@pytest.mark.slow
def test_a_failing_rank_fails_every_rank_without_hanging(workdir):
    _synthetic_split(workdir)
    outcomes = _spawn_two_ranks(workdir, failing_rank=1)
    assert outcomes[1]["raised"] == "InputError"
    assert outcomes[0]["raised"] == "TalkingFaceError" and outcomes[0]["user_error"]
    assert outcomes[0]["message"] == "rank 1 failed: InputError: this rank's clip is broken"
    assert not os.path.exists(os.path.join("sharded", "demo", "HyperLipsBase", "metrics.json"))


@pytest.mark.slow
def test_torchrun_evaluate_equals_one_process(demo_base_data, workdir, monkeypatch):
    """--mode=evaluate of a Base checkpoint on the demo set's two train clips: 2 gloo ranks under
    torchrun write the metrics.json of one process, plus world_size."""
    from run_talkingface import main
    narrow_networks.install(monkeypatch)
    checkpoint = narrow_networks.random_checkpoint("HyperLipsBase", workdir / "checkpoints" / "demo" / "HyperLipsBase")
    options = [f"--{k}={v}" for k, v in demo_base_data.items()] + [
        "--model=HyperLipsBase", "--dataset=demo", "--device=cpu", "--infer_bf16=false", "--mode=evaluate",
        f"--checkpoint={checkpoint}", "--metrics=[PSNR,SSIM,LMD]", "--eval_split=train",
        "--eval_max_frames=5", "--eval_num_sample_videos=2"]
    assert main(options + [f"--results_root={workdir / 'single'}"]) == 0
    _torchrun(options + [f"--results_root={workdir / 'sharded'}"], workdir)

    single, sharded = (json.loads((workdir / run / "demo" / "HyperLipsBase" / "metrics.json").read_text())
                       for run in ("single", "sharded"))
    assert sharded["clips"] == 2 and sharded["world_size"] == 2 and single["world_size"] == 1
    assert list(sharded["per_clip"]) == list(single["per_clip"]) and sharded["per_clip"] == single["per_clip"]
    assert sharded["mean"] == pytest.approx(single["mean"], rel=1e-6, abs=1e-9)
    assert _comparable(sharded) == _comparable(dict(single, mean=sharded["mean"]))
    for clip_id in sharded["per_clip"]:     # each rank saved its own clip's sample video
        assert (workdir / "sharded" / "demo" / "HyperLipsBase" / "samples" / f"{clip_id}.mp4").is_file()


@pytest.fixture(scope="module")
def two_val_clips(tmp_path_factory):
    """A 3-clip demo set (1 s clips: 1 train, 2 val), so both ranks score a clip after training."""
    from talkingface.config import Config
    from talkingface.data.dataprocess.hyperlipsbase_process import HyperLipsBasePreprocessor
    tmp = tmp_path_factory.mktemp("two_val_clips")
    values = dict(data_root=str(tmp / "data"), preprocessed_root=str(tmp / "pre"), num_preprocess_workers=1,
                  demo_num_clips=3, demo_clip_seconds=1.0, val_ratio=0.67, test_ratio=0.0)
    HyperLipsBasePreprocessor(Config(model="HyperLipsBase", dataset="demo", config_dict=values)).run()
    return values


@pytest.mark.slow
def test_torchrun_end_of_training_evaluation_is_sharded(two_val_clips, workdir, monkeypatch):
    """2 gloo ranks train one step and evaluate the val split, a clip each, without hanging; the
    numbers are those one process gives the checkpoint saved at that step."""
    from run_talkingface import main
    narrow_networks.install(monkeypatch)
    narrow_networks.random_checkpoint("SyncNet", workdir / "checkpoints" / "demo" / "SyncNet", seed=1)
    options = [f"--{k}={v}" for k, v in two_val_clips.items()] + [
        "--model=HyperLipsBase", "--dataset=demo", "--device=cpu", "--infer_bf16=false", "--metrics=[PSNR,SSIM]",
        f"--checkpoint_root={workdir / 'checkpoints'}", "--eval_max_frames=4", "--eval_num_sample_videos=0"]
    _torchrun(options + ["--max_steps=1", "--batch_size=2", "--eval_batch_size=2", "--num_workers=0",
                         "--max_val_batches=1", f"--results_root={workdir / 'trained'}"], workdir)
    trained = json.loads((workdir / "trained" / "demo" / "HyperLipsBase" / "metrics.json").read_text())
    assert trained["split"] == "val" and trained["clips"] == 2 and trained["world_size"] == 2

    assert main(options + ["--mode=evaluate", "--eval_split=val", f"--results_root={workdir / 'single'}"]) == 0
    single = json.loads((workdir / "single" / "demo" / "HyperLipsBase" / "metrics.json").read_text())
    assert single["checkpoint"] == trained["checkpoint"] and single["per_clip"] == trained["per_clip"]
