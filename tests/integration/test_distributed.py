"""DistributedDataParallel on the CPU: two gloo ranks train in step and end with equal weights."""
import os

import torch
import torch.multiprocessing as mp

from talkingface.utils.checkpoint import latest_checkpoint
from builders import LINE, LineTrainer, free_port, make_config


def _rank_main(rank, world_size, port, workdir, resume_from_single):
    os.chdir(workdir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    from talkingface.utils import distributed as dist_utils
    config = make_config("SyncNet", **dict(LINE, max_steps=10 if resume_from_single else 6, checkpoint_interval=3))
    config["device"] = dist_utils.setup_distributed(config["device"])
    torch.manual_seed(1000 + rank)   # different per rank: DDP must broadcast rank 0's weights
    trainer = LineTrainer(config)
    trainer.fit()
    torch.save({n: p.detach().clone() for n, p in trainer.unwrap(trainer.networks["line"]).named_parameters()},
               os.path.join(workdir, f"rank{rank}.pt"))
    torch.save(trainer.global_step, os.path.join(workdir, f"step{rank}.pt"))
    dist_utils.cleanup_distributed()


def _run_two_ranks(workdir, resume_from_single=False):
    mp.spawn(_rank_main, args=(2, free_port(), str(workdir), resume_from_single), nprocs=2, join=True)
    weights = [torch.load(workdir / f"rank{r}.pt") for r in range(2)]
    steps = [torch.load(workdir / f"step{r}.pt") for r in range(2)]
    return weights, steps


def test_two_gloo_ranks_end_with_identical_weights(workdir):
    weights, steps = _run_two_ranks(workdir)
    assert steps == [6, 6]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name]), name
    checkpoint = torch.load(latest_checkpoint("checkpoints/demo/SyncNet"), weights_only=True)
    assert checkpoint["global_step"] == 6
    assert not any(k.startswith("module.") for k in checkpoint["state_dict"])  # one format for both


def test_single_process_checkpoint_resumes_under_ddp(workdir):
    LineTrainer(make_config("SyncNet", **dict(LINE, max_steps=6, checkpoint_interval=3))).fit()
    weights, steps = _run_two_ranks(workdir, resume_from_single=True)
    assert steps == [10, 10]
    for name in weights[0]:
        assert torch.equal(weights[0][name], weights[1][name])
