"""Preprocessing under torchrun: two gloo ranks split the videos (Base) and the clips (HR) and
give the same preprocessed data as one process; a bad input stops every rank with its one line."""
import hashlib
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from builders import free_port, make_config


def preprocess_config(root, pre, dataset="demo", **overrides):
    """HyperLipsHR settings: its preprocessing makes the Base data, then the HR data."""
    values = dict(data_root=str(root / "data"), preprocessed_root=str(root / pre),
                  num_preprocess_workers=0, hr_preprocess_workers=0)
    if dataset == "demo":
        values.update(demo_num_clips=3, demo_clip_seconds=0.5, min_clip_frames=10)
    return make_config("HyperLipsHR", root, dataset, **{**values, **overrides})


def save_random_base_checkpoint(config):
    from talkingface.model import build_network
    from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file
    torch.manual_seed(0)
    path = checkpoint_path(os.path.join(config["checkpoint_root"], "demo", "HyperLipsBase"), 1)
    save_checkpoint_file({"state_dict": build_network("HyperLipsBase").state_dict(), "global_step": 1,
                          "global_epoch": 0, "model": "HyperLipsBase"}, path)


def _rank_main(rank, world_size, port, root):
    import pathlib
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from talkingface.data.dataprocess import hyperlipsbase_process, hyperlipshr_process
    from talkingface.quick_start.quick_start import preprocess
    from talkingface.utils import distributed as dist_utils
    from talkingface.utils.errors import InputError
    root = pathlib.Path(root)
    config = preprocess_config(root, "pre_ranks")
    config["device"] = dist_utils.setup_distributed(config["device"])
    done = []  # what this rank made itself
    process_video, write_hr_clip = hyperlipsbase_process.process_video, hyperlipshr_process.write_hr_clip
    hyperlipsbase_process.process_video = lambda task, detector: done.append(task["clip_id"]) or \
        process_video(task, detector)
    hyperlipshr_process.write_hr_clip = lambda job: done.append("hr:" + os.path.basename(job["out_dir"])) or \
        write_hr_clip(job)
    # A dataset without videos: one line on every rank, no rank left waiting.
    empty = preprocess_config(root, "pre_empty", dataset="MEAD", data_root=str(root / "no_videos"))
    os.makedirs(empty["data_root"], exist_ok=True)
    try:
        preprocess(empty)
        error = None
    except InputError as exc:
        error = str(exc)
    preprocess(config)
    with open(root / f"rank{rank}.json", "w") as f:
        json.dump({"done": done, "error": error, "workers": hyperlipsbase_process.usable_cpus()}, f)
    dist_utils.cleanup_distributed()


def tree(root):
    """{relative path: sha1} of every file; report.json without its timings."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if name == "report.json":
                with open(path) as f:
                    report = json.load(f)
                data = json.dumps({k: {f: v for f, v in e.items() if f != "seconds"} for k, e in report.items()},
                                  sort_keys=True).encode()
            elif name == ".done" and rel.startswith("hr_"):
                continue  # names the time its Base clip was written, which differs between the two runs
            else:
                with open(path, "rb") as f:
                    data = f.read()
            out[rel] = hashlib.sha1(data).hexdigest()
    return out


@pytest.mark.slow
def test_two_ranks_split_preprocessing_and_match_one_process(tmp_path):
    """Rank 0 generates the demo videos; the 3 videos and then their HR clips are split between
    the ranks; the result equals one process's file for file."""
    save_random_base_checkpoint(preprocess_config(tmp_path, "pre"))
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = []
    for rank in range(2):
        with open(tmp_path / f"rank{rank}.json") as f:
            ranks.append(json.load(f))
    for info in ranks:
        assert info["error"] and info["error"].startswith("no video files under") and "\n" not in info["error"]
        assert info["workers"] == max(1, len(os.sched_getaffinity(0)) // 2)
    made = [set(info["done"]) for info in ranks]
    assert made[0] and made[1] and not made[0] & made[1]  # each rank did its own share
    clip_ids = {c for c in made[0] | made[1] if not c.startswith("hr:")}
    assert len(clip_ids) == 3 and {c for c in made[0] | made[1] if c.startswith("hr:")} == \
        {"hr:" + c for c in clip_ids}

    from talkingface.quick_start.quick_start import preprocess
    config = preprocess_config(tmp_path, "pre_one", num_preprocess_workers=1)
    preprocess(config)
    one, both = tree(tmp_path / "pre_one"), tree(tmp_path / "pre_ranks")
    assert set(one) == set(both) and one == both
    assert {os.path.dirname(p) for p in one if p.endswith("meta.json") and not p.startswith("hr_")} == clip_ids
    assert any(p.startswith("hr_128/") and p.endswith("HYPER_IMG/0.png") for p in one)



def test_clips_another_rank_made_out_of_sight_are_a_one_line_error(tmp_path, monkeypatch):
    """Ranks on machines without a shared preprocessed_root: rank 0 says so instead of writing
    filelists of clips it does not have."""
    from talkingface.data.dataprocess import hyperlipsbase_process
    from talkingface.utils.errors import InputError
    waits = []
    monkeypatch.setattr(hyperlipsbase_process.time, "sleep", waits.append)
    config = preprocess_config(tmp_path, "pre", dataset="MEAD")
    os.makedirs(config["preprocessed_root"])
    pre = hyperlipsbase_process.HyperLipsBasePreprocessor(config)
    report = {"a.mp4": {"video": "a.mp4", "clip_id": "a", "status": "ok", "n_frames": 20, "notes": []}}
    with pytest.raises(InputError, match="must be on a filesystem they all share") as info:
        pre._write_outputs(report, pre.current_manifest())
    assert "\n" not in str(info.value) and sum(waits) > 30  # it waited for a late network filesystem
    assert os.listdir(config["preprocessed_root"]) == []
