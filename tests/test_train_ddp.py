"""HyperLipsBase training steps under DistributedDataParallel (two gloo ranks on the CPU).

The generator step runs the discriminator once (GAN term) and the discriminator step once (real
and fake concatenated): one forward per backward, as DDP needs. Both ranks must end in step.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank, world_size, port, workdir):
    import pathlib
    os.chdir(workdir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from test_train_base import fixed_batch, make_config
    from talkingface.trainer.hyperlipsbase_trainer import HyperLipsBaseTrainer
    from talkingface.utils import distributed as dist_utils
    config = make_config(pathlib.Path(workdir))
    config["device"] = dist_utils.setup_distributed(config["device"])
    torch.manual_seed(100 + rank)           # different per rank: DDP must broadcast rank 0's weights
    trainer = HyperLipsBaseTrainer(config)
    trainer._set_mode(True)
    batch = {k: v[rank:rank + 1] for k, v in fixed_batch(batch_size=2).items()}   # a different sample per rank
    for _ in range(2):
        logs = trainer.train_step(batch)
    assert {"gan", "sync", "disc_real", "disc_fake"} <= set(logs)
    torch.save({name: {k: v.detach().clone() for k, v in trainer.raw(net).state_dict().items()}
                for name, net in trainer.networks.items()}, os.path.join(workdir, f"rank{rank}.pt"))
    dist_utils.cleanup_distributed()


@pytest.mark.slow
def test_two_ranks_train_generator_and_discriminator_in_step(workdir):
    from test_train_base import save_random_expert
    save_random_expert(workdir)
    mp.spawn(_rank_main, args=(2, _free_port(), str(workdir)), nprocs=2, join=True)
    states = [torch.load(workdir / f"rank{r}.pt") for r in range(2)]
    for name in ("generator", "discriminator"):
        for key, value in states[0][name].items():
            if value.is_floating_point():   # BN running stats are per rank (no SyncBatchNorm)
                if "running_" in key:
                    continue
                assert torch.allclose(value, states[1][name][key], atol=1e-6), f"{name}.{key}"
