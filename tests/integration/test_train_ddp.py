"""HyperLipsBase and HyperLipsHR training steps under DistributedDataParallel (two gloo ranks).

Each step runs the discriminator forward once (real and generated concatenated) and backward
once, the generator forward and backward once (its GAN gradient comes from D's backward): one
backward per forward, as DDP needs. Both ranks must end with the same weights. The networks are
the reduced-width ones of tests/narrow_networks.py (DDP is plumbing; HR's decoder is small already).
"""
import os

import pytest
import torch
import torch.multiprocessing as mp

from talkingface.utils.checkpoint import latest_checkpoint
import narrow_networks
from builders import base_batch, base_config, hr_batch, hr_config
from paths import TESTS_DIR

NARROW_RUN = TESTS_DIR / "interrupted_run.py"   # run_talkingface.py with the narrow networks


def _trainer_and_batch(model, workdir, rank):
    """The model's trainer on this rank and a different one-sample batch per rank."""
    if model == "HyperLipsBase":
        from talkingface.trainer.hyperlipsbase_trainer import HyperLipsBaseTrainer as trainer_class
        config, batch = base_config(workdir), base_batch(batch_size=2)
    else:
        from talkingface.trainer.hyperlipshr_trainer import HyperLipsHRTrainer as trainer_class
        config, batch = hr_config(workdir), hr_batch(2, 128)
    return trainer_class, config, {k: v[rank:rank + 1] for k, v in batch.items()}


def _rank_main(rank, world_size, port, workdir, model):
    import pathlib
    os.chdir(workdir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    narrow_networks.install()
    from talkingface.utils import distributed as dist_utils
    trainer_class, config, batch = _trainer_and_batch(model, pathlib.Path(workdir), rank)
    config["device"] = dist_utils.setup_distributed(config["device"])
    torch.manual_seed(100 + rank)           # different per rank: DDP must broadcast rank 0's weights
    trainer = trainer_class(config)
    trainer._set_mode(True)
    for _ in range(2):
        logs = trainer.train_step(batch)
    assert "gan" in logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    torch.save({name: {k: v.detach().clone() for k, v in trainer.unwrap(net).state_dict().items()}
                for name, net in trainer.networks.items()}, os.path.join(workdir, f"rank{rank}.pt"))
    dist_utils.cleanup_distributed()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["HyperLipsBase", "HyperLipsHR"])
def test_two_ranks_train_generator_and_discriminator_in_step(workdir, free_port, model):
    narrow_networks.random_checkpoint("SyncNet", workdir / "checkpoints" / "demo" / "SyncNet", seed=1)
    mp.spawn(_rank_main, args=(2, free_port, str(workdir), model), nprocs=2, join=True)
    states = [torch.load(workdir / f"rank{r}.pt") for r in range(2)]
    for name in ("generator", "discriminator"):
        for key, value in states[0][name].items():
            if value.is_floating_point():   # BN running stats are per rank (no SyncBatchNorm)
                if "running_" in key:
                    continue
                assert torch.allclose(value, states[1][name][key], atol=1e-6), f"{name}.{key}"


def _descendants(pid):
    """Every live process below `pid` (torchrun starts its ranks in sessions of their own)."""
    children = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
        except (ValueError, OSError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _torchrun(args, cwd, timeout=300):
    """`torchrun --nproc_per_node=2 run_talkingface.py ARGS` on the CPU (gloo), with the narrow
    networks (NARROW_RUN); a hang fails the test after `timeout` seconds instead of blocking the
    suite (torchrun and its ranks are killed)."""
    import signal
    import subprocess
    import sys
    import tempfile
    script = str(NARROW_RUN)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *args]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"), text=True,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for pid in [process.pid] + _descendants(process.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
        log.seek(0)
        output = log.read()
    assert process.returncode is not None and process.returncode >= 0, \
        f"2 ranks did not finish within {timeout} s (a hang?):\n{output[-4000:]}"
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def hr_demo(demo_base_data, tmp_path_factory):
    """The demo set's HR data (from a random-init narrow Base checkpoint) in a folder of its own,
    and the settings that use it."""
    import shutil
    from talkingface.config import Config
    from talkingface.data.dataprocess.hyperlipshr_process import HyperLipsHRPreprocessor
    root = tmp_path_factory.mktemp("hr_ddp")
    shutil.copytree(demo_base_data["preprocessed_root"], root / "pre")
    base = narrow_networks.random_checkpoint("HyperLipsBase", root / "checkpoints" / "demo" / "HyperLipsBase")
    values = dict(demo_base_data, preprocessed_root=str(root / "pre"), base_checkpoint=base,
                  hr_preprocess_workers=0, hr_base_batch_size=8, device="cpu")
    with pytest.MonkeyPatch.context() as patch:
        narrow_networks.install(patch)
        HyperLipsHRPreprocessor(Config(model="HyperLipsHR", dataset="demo", config_dict=values)).run()
    return root, values


@pytest.mark.slow
def test_two_ranks_train_and_evaluate_hr_without_hanging(hr_demo, tmp_path):
    """Only rank 0 evaluates (after training, and in --mode=evaluate) while the other rank waits:
    nothing it runs may wait for that rank in turn (a DDP-wrapped network's forward would: buffer
    broadcast), or the run hangs."""
    import json
    _, values = hr_demo
    values = dict(values, checkpoint_root=str(tmp_path / "checkpoints"), results_root=str(tmp_path / "results"),
                  max_steps=2, batch_size=2, eval_batch_size=2, num_workers=0, max_val_batches=1, log_interval=1,
                  metrics="[PSNR]", eval_max_clips=1, eval_max_frames=4, eval_num_sample_videos=0,
                  eval_split="val")
    args = ["--model=HyperLipsHR", "--dataset=demo"] + [f"--{k}={v}" for k, v in values.items()]
    _torchrun(args, tmp_path)
    results = tmp_path / "results" / "demo" / "HyperLipsHR"
    trained = json.loads((results / "metrics.json").read_text())
    checkpoint = torch.load(latest_checkpoint(str(tmp_path / "checkpoints" / "demo" / "HyperLipsHR")), weights_only=True)
    assert checkpoint["global_step"] == 2 and len(checkpoint["rng"]) == 2      # both ranks' generators
    assert "PSNR" not in trained["skipped"] and isinstance(trained["mean"]["PSNR"], float)   # scored, finite
    assert torch.isfinite(torch.tensor(trained["mean"]["PSNR"])) and trained["mean"]["PSNR"] > 0

    (results / "metrics.json").unlink()
    _torchrun(args + ["--mode=evaluate"], tmp_path)
    assert json.loads((results / "metrics.json").read_text()).keys() == trained.keys()
    assert json.loads((results / "run.json").read_text())["evaluated_step"] == 2
