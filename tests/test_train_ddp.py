"""HyperLipsBase and HyperLipsHR training steps under DistributedDataParallel (two gloo ranks).

Each step runs the discriminator forward once (real and generated concatenated) and backward
once, the generator forward and backward once (its GAN gradient comes from D's backward): one
backward per forward, as DDP needs. Both ranks must end with the same weights.
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


def _trainer_and_batch(model, workdir, rank):
    """The model's trainer on this rank and a different one-sample batch per rank."""
    if model == "HyperLipsBase":
        from test_train_base import fixed_batch, make_config
        from talkingface.trainer.hyperlipsbase_trainer import HyperLipsBaseTrainer as trainer_class
        config, batch = make_config(workdir), fixed_batch(batch_size=2)
    else:
        from test_hr_train import make_config, random_batch
        from talkingface.trainer.hyperlipshr_trainer import HyperLipsHRTrainer as trainer_class
        config, batch = make_config(workdir), random_batch(2, 128)
    return trainer_class, config, {k: v[rank:rank + 1] for k, v in batch.items()}


def _rank_main(rank, world_size, port, workdir, model):
    import pathlib
    os.chdir(workdir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    from talkingface.utils import distributed as dist_utils
    trainer_class, config, batch = _trainer_and_batch(model, pathlib.Path(workdir), rank)
    config["device"] = dist_utils.setup_distributed(config["device"])
    torch.manual_seed(100 + rank)           # different per rank: DDP must broadcast rank 0's weights
    trainer = trainer_class(config)
    trainer._set_mode(True)
    for _ in range(2):
        logs = trainer.train_step(batch)
    assert "gan" in logs and all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    torch.save({name: {k: v.detach().clone() for k, v in trainer.raw(net).state_dict().items()}
                for name, net in trainer.networks.items()}, os.path.join(workdir, f"rank{rank}.pt"))
    dist_utils.cleanup_distributed()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["HyperLipsBase", "HyperLipsHR"])
def test_two_ranks_train_generator_and_discriminator_in_step(workdir, model):
    from test_train_base import save_random_expert
    save_random_expert(workdir)
    mp.spawn(_rank_main, args=(2, _free_port(), str(workdir), model), nprocs=2, join=True)
    states = [torch.load(workdir / f"rank{r}.pt") for r in range(2)]
    for name in ("generator", "discriminator"):
        for key, value in states[0][name].items():
            if value.is_floating_point():   # BN running stats are per rank (no SyncBatchNorm)
                if "running_" in key:
                    continue
                assert torch.allclose(value, states[1][name][key], atol=1e-6), f"{name}.{key}"
