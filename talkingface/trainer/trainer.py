"""The shared training loop every model's trainer subclasses.

A subclass says *what* to train (`build`: networks and optimizers; `train_step`,
`validation_step`: the losses; `generate_clip`: what the evaluator scores). This class owns
*how*: device and mixed precision, DistributedDataParallel, the step loop with periodic
validation and checkpoints, resuming, TensorBoard and progress bars.
"""
import logging
import os
import shutil
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from talkingface.utils import distributed as dist_utils
from talkingface.utils.checkpoint import (checkpoint_path, latest_checkpoint, list_checkpoints,
                                          load_checkpoint_file, save_checkpoint_file)
from talkingface.utils.errors import CheckpointError, ConfigError, TalkingFaceError
from talkingface.utils.registry import DATASETS, TRAINERS
from talkingface.utils.seed import init_seed, seed_worker

logger = logging.getLogger(__name__)

RUNNING_MARKER = "RUNNING"  # present while a run is under way: a crashed run leaves it behind


class TrainingError(TalkingFaceError):
    """Training cannot go on (a non-finite loss, an empty dataset)."""


def adam(parameters, lr, betas=(0.9, 0.999)):
    """Adam as the official scripts configure it, in torch's fused implementation where the
    device has one (the same update, in one kernel over all tensors instead of a loop over them),
    the per-tensor loop elsewhere. Frozen parameters are left out."""
    parameters = [p for p in parameters if p.requires_grad]
    try:
        return torch.optim.Adam(parameters, lr=lr, betas=betas, fused=True)
    except RuntimeError:    # a device without the fused kernel
        return torch.optim.Adam(parameters, lr=lr, betas=betas)


@TRAINERS.register("Trainer")
class Trainer:
    def __init__(self, config):
        self.config = config
        self.device = config["device"]
        self.model_name = config["model"]
        self.checkpoint_dir = config["checkpoint_dir"]
        self.results_dir = config["results_dir"]
        self.global_step = 0
        self.global_epoch = 0
        self.networks = {}
        self.optimizers = {}
        self.amp_enabled, self.amp_dtype = self._amp_settings()
        self.writer = None
        self.last_validation, self.last_validation_step = {}, None
        # Seed here too, so a trainer built outside run() (tests, notebooks) is just as repeatable.
        init_seed(config["seed"] + dist_utils.rank(), config["reproducible"])
        self.build()
        if not self.networks:
            raise NotImplementedError(f"{type(self).__name__}.build() created no networks")
        self._prepare_networks()
        use_scaler = self.amp_enabled and self.amp_dtype == torch.float16
        self.scalers = {name: torch.amp.GradScaler(self.device.type, enabled=use_scaler)
                        for name in self.optimizers}

    # ------------------------------------------------------------------ subclass hooks
    def build(self):
        """Create `self.networks` and `self.optimizers` (dicts; the first network is the model)."""
        raise NotImplementedError

    def train_step(self, batch):
        """One optimisation step on `batch`; returns a dict of floats to log."""
        raise NotImplementedError

    def validation_step(self, batch):
        """Validation losses on `batch` (called under no_grad, networks in eval mode)."""
        raise NotImplementedError

    def generate_clip(self, clip):
        """Generated face crops (n,H,W,3) uint8 BGR for a whole clip from its own audio."""
        raise NotImplementedError(f"{self.model_name} does not generate video")

    def build_datasets(self):
        dataset_class = DATASETS.get(self.config["dataset_class"])
        return dataset_class(self.config, "train"), dataset_class(self.config, "val")

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def main_network_name(self):
        return next(iter(self.networks))

    @staticmethod
    def raw(network):
        """The plain module under DDP and torch.compile wrappers."""
        network = getattr(network, "_orig_mod", network)
        return network.module if isinstance(network, DistributedDataParallel) else network

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled)

    def to_device(self, batch):
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(v) for v in batch)
        if torch.is_tensor(batch):
            return batch.to(self.device, non_blocking=True)
        return batch

    def optimize(self, name, loss, only_own_parameters=False, gradient_of=None, injected=None):
        """Backward (scaled under fp16), optional gradient clipping, optimizer step, zero_grad.

        `only_own_parameters`: gradients reach only this optimizer's parameters (autograd then
        skips every weight gradient of the other networks the loss passed through).
        `gradient_of`: a leaf the loss depends on (say another network's detached output) whose
        gradient is computed in the same backward and returned, unscaled, in float32.
        `injected`: (tensor, gradient) backpropagated together with `loss`, as if the loss had a
        term whose gradient at `tensor` is `gradient`.
        """
        if not torch.isfinite(loss.detach()).all():
            raise TrainingError(f"the {name} loss became {loss.item()} at step {self.global_step + 1}; "
                                "lower the learning rate, set --clip_grad_norm, or resume from an earlier checkpoint")
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
        inputs = None
        if only_own_parameters:
            inputs = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if gradient_of is not None and inputs is not None:
            inputs.append(gradient_of)
        outputs, seeds = [scaler.scale(loss)], [None]
        if injected is not None:
            outputs.append(injected[0])
            seeds.append((injected[1].float() * scale).to(injected[0].dtype))
        torch.autograd.backward(outputs, seeds, inputs=inputs)
        returned = None
        if gradient_of is not None:
            grad = gradient_of.grad if gradient_of.grad is not None else torch.zeros_like(gradient_of)
            returned, gradient_of.grad = grad.float() / scale, None
        clip = self.config["clip_grad_norm"]
        if clip and clip > 0:
            scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return returned

    def log_scalars(self, prefix, values):
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, self.global_step)

    def log_images(self, tag, images):
        """Write up to `num_image_samples` BGR [0,1] images (N,3,H,W) to TensorBoard."""
        if self.writer is not None:
            images = images[: self.config["num_image_samples"]].detach().float().clamp(0, 1).flip(1).cpu()
            self.writer.add_images(tag, images, self.global_step)

    def build_dataloader(self, dataset, train):
        if len(dataset) == 0:
            raise TrainingError(f"the {'training' if train else 'validation'} set is empty; "
                                "check data_root and the preprocessing report (report.json)")
        batch_size = self.config["batch_size"] if train else self.config["eval_batch_size"]
        sampler = None
        if dist_utils.is_distributed():
            sampler = DistributedSampler(dataset, shuffle=train, seed=self.config["seed"])
        workers = self.config["num_workers"]
        generator = torch.Generator().manual_seed(self.config["seed"] + dist_utils.rank())
        return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                          num_workers=workers, worker_init_fn=seed_worker, generator=generator,
                          drop_last=train and len(dataset) >= batch_size * dist_utils.world_size(),
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)

    # ------------------------------------------------------------------ set-up
    def _amp_settings(self):
        amp = self.config["amp"]
        enabled = self.device.type == "cuda" if amp == "auto" else bool(amp)
        dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.config["amp_dtype"] not in dtypes:
            raise ConfigError(f"amp_dtype must be bfloat16 or float16, not '{self.config['amp_dtype']}'")
        return enabled, dtypes[self.config["amp_dtype"]]

    def _prepare_networks(self):
        for name, network in self.networks.items():
            network.to(self.device)
            if self.config["channels_last"]:
                network.to(memory_format=torch.channels_last)
            if dist_utils.is_distributed() and any(p.requires_grad for p in network.parameters()):
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                network = DistributedDataParallel(network, device_ids=device_ids)
            if self.config["compile"]:
                network = torch.compile(network)
            self.networks[name] = network

    def _set_mode(self, train):
        for network in self.networks.values():
            network.train(train)

    def _open_writer(self):
        if dist_utils.is_main_process() and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(os.path.join(self.results_dir, "tensorboard"))

    # ------------------------------------------------------------------ checkpoints
    def state(self):
        main = self.main_network_name
        return {
            "state_dict": self.raw(self.networks[main]).state_dict(),
            "optimizer": self.optimizers[main].state_dict() if main in self.optimizers else {},
            "global_step": self.global_step,
            "global_epoch": self.global_epoch,
            "networks": {n: self.raw(net).state_dict() for n, net in self.networks.items()},
            "optimizers": {n: opt.state_dict() for n, opt in self.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "model": self.model_name,
            "config": {k: v for k, v in self.config.plain().items() if isinstance(v, (str, int, float, bool, type(None)))},
        }

    def save_checkpoint(self):
        if dist_utils.is_main_process():
            path = checkpoint_path(self.checkpoint_dir, self.global_step)
            save_checkpoint_file(self.state(), path)
            for _, old in list_checkpoints(self.checkpoint_dir)[:-max(1, self.config["keep_checkpoints"])]:
                os.remove(old)
            logger.info("saved %s", path)
        dist_utils.barrier()

    def load_state(self, state, path="checkpoint", weights_only=False):
        """Restore networks and step counters (and, unless `weights_only`, optimizers) from `state`."""
        if state.get("model") not in (None, self.model_name):
            raise CheckpointError(f"{path} is a {state['model']} checkpoint, not {self.model_name}")
        networks = state.get("networks") or {self.main_network_name: state["state_dict"]}
        try:
            for name, network in self.networks.items():
                if name in networks:
                    self.raw(network).load_state_dict(networks[name])
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit this {self.model_name} configuration "
                                  f"({str(exc).splitlines()[0]})") from None
        self.global_step = int(state.get("global_step", 0))
        self.global_epoch = int(state.get("global_epoch", 0))
        if weights_only:
            return
        for name, optimizer in self.optimizers.items():
            if name in state.get("optimizers", {}):
                optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.scalers.items():
            if name in state.get("scalers", {}):
                scaler.load_state_dict(state["scalers"][name])

    def load_checkpoint(self, path=None, weights_only=False):
        """Load `path`, or the newest checkpoint of this model; returns the path loaded."""
        path = path or latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise CheckpointError(f"no {self.model_name} checkpoint in {self.checkpoint_dir}/: run "
                                  f"`python run_talkingface.py --model={self.model_name} "
                                  f"--dataset={self.config['dataset']}` first")
        self.load_state(load_checkpoint_file(path, map_location=self.device), path, weights_only)
        return path

    def resume(self):
        """Apply `resume`: auto continues any earlier run, true insists on one, false starts over."""
        mode = self.config["resume"]
        latest = latest_checkpoint(self.checkpoint_dir)
        if mode is False or mode == "false":
            if latest is not None and dist_utils.is_main_process():
                archive = os.path.join(self.checkpoint_dir, time.strftime("previous_%Y%m%d_%H%M%S"))
                os.makedirs(archive)
                for _, path in list_checkpoints(self.checkpoint_dir):
                    shutil.move(path, archive)
                logger.info("resume=false: earlier checkpoints moved to %s", archive)
            dist_utils.barrier()
            return None
        if latest is None:
            if mode is True:
                raise CheckpointError(f"resume=true but there is no checkpoint in {self.checkpoint_dir}/")
            return None
        self.load_checkpoint(latest)
        logger.info("resumed from %s (step %d, epoch %d)", latest, self.global_step, self.global_epoch)
        return latest

    # ------------------------------------------------------------------ the loop
    def fit(self):
        config = self.config
        train_set, val_set = self.build_datasets()
        train_loader = self.build_dataloader(train_set, train=True)
        val_loader = self.build_dataloader(val_set, train=False)
        self.resume()
        max_steps = config["max_steps"]
        if self.global_step >= max_steps:
            logger.info("%s is already trained to step %d (max_steps=%d): nothing to train; raise "
                        "--max_steps to go on or pass --resume=false to start over",
                        self.model_name, self.global_step, max_steps)
            return
        self._open_writer()
        marker = os.path.join(self.checkpoint_dir, RUNNING_MARKER)
        if dist_utils.is_main_process():
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            open(marker, "w").close()
        logger.info("training %s on %s: %d training / %d validation samples, device %s, amp %s, %d rank(s)",
                    self.model_name, config["dataset"], len(train_set), len(val_set), self.device,
                    self.amp_dtype if self.amp_enabled else "off", dist_utils.world_size())
        progress = tqdm(total=max_steps, initial=self.global_step, desc=f"train {self.model_name}",
                        unit="step", disable=not dist_utils.is_main_process(), dynamic_ncols=True)
        running, since_log = {}, 0
        last_saved = self.global_step
        while self.global_step < max_steps:
            if isinstance(train_loader.sampler, DistributedSampler):
                train_loader.sampler.set_epoch(self.global_epoch)
            for batch in train_loader:
                self._set_mode(True)
                losses = self.train_step(self.to_device(batch))
                self.global_step += 1
                progress.update(1)
                for key, value in losses.items():
                    running[key] = running.get(key, 0.0) + float(value)
                since_log += 1
                if self.global_step % config["log_interval"] == 0 or self.global_step == max_steps:
                    means = dist_utils.reduce_mean({k: v / since_log for k, v in running.items()}, self.device)
                    self.log_scalars("train", means)
                    progress.set_postfix({k: f"{v:.4f}" for k, v in means.items()})
                    running, since_log = {}, 0
                if self.global_step % config["eval_interval"] == 0:
                    self.validate(val_loader)
                if self.global_step % config["checkpoint_interval"] == 0:
                    self.save_checkpoint()
                    last_saved = self.global_step
                if self.global_step >= max_steps:
                    break
            else:
                self.global_epoch += 1
        progress.close()
        if self.global_step % config["eval_interval"] != 0:
            self.validate(val_loader)
        if last_saved != self.global_step:
            self.save_checkpoint()
        if dist_utils.is_main_process() and os.path.exists(marker):
            os.remove(marker)
        if self.writer is not None:
            self.writer.flush()

    @torch.no_grad()
    def validate(self, loader):
        self._set_mode(False)
        totals, count = {}, 0
        for index, batch in enumerate(loader):
            if index >= self.config["max_val_batches"]:
                break
            with self.autocast():
                values = self.validation_step(self.to_device(batch))
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + float(value)
            count += 1
        means = dist_utils.reduce_mean({k: v / max(count, 1) for k, v in totals.items()}, self.device)
        self.log_scalars("val", means)
        if means:
            logger.info("step %d validation: %s", self.global_step,
                        ", ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())))
        self._set_mode(True)
        self.last_validation, self.last_validation_step = means, self.global_step
        return means

    def evaluate(self, split="val"):
        """Score the trained model with the Evaluator (the metrics in `metrics`)."""
        from talkingface.evaluator import Evaluator
        self._set_mode(False)
        if not dist_utils.is_main_process():
            return None
        return Evaluator(self.config).evaluate(self, split=split)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
