"""The shared training loop every model's trainer subclasses.

A subclass says *what* to train (`build`: networks and optimizers; `train_step`,
`validation_step`: the losses; `inference_networks`: what the Evaluator runs, as inference does).
This class owns *how*: device and mixed precision, DistributedDataParallel, the step loop with
periodic validation and checkpoints, resuming, TensorBoard and progress bars.

Resuming is exact: a checkpoint holds, besides weights and optimizers, every rank's random
generators and how far the current epoch got; the training order comes from ResumableSampler
(derived from the seed and the epoch, items seeded by their place in it). A run continued from
checkpoint k ends with the weights of a run never stopped (CPU, `reproducible: true`).
"""
import logging
import os
import shutil
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from talkingface.data.dataset.sampler import ResumableSampler, SeededItems
from talkingface.evaluator.evaluator import Evaluator
from talkingface.inference.pipeline import LipSyncer
from talkingface.model import extract_state_dict
from talkingface.utils import distributed as dist_utils
from talkingface.utils.checkpoint import (checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint_file,
                                          save_checkpoint_file)
from talkingface.utils.errors import CheckpointError, TalkingFaceError
from talkingface.utils.files import remove_stale_temp_files, write_json_atomic
from talkingface.utils.fingerprint import checkpoint_fingerprint
from talkingface.utils.registry import DATASETS, TRAINERS
from talkingface.utils.run_record import run_record
from talkingface.utils.seed import init_seed, preserved_rng, rng_state, seed_worker, set_rng_state

logger = logging.getLogger(__name__)

RUNNING_MARKER = "RUNNING"  # present while a run is under way: a crashed run leaves it behind
CORRUPT_SUFFIX = ".corrupt"  # an unreadable checkpoint is renamed so that nothing reads it again


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
        self.epoch_samples = 0     # training items this rank has consumed in the current epoch
        self._resumed_rng = None   # this rank's generators from the checkpoint, applied when fit() starts
        self._run_record = None
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

    def inference_networks(self):
        """(Base generator, HR decoder or None) in eval mode for the inference pipeline."""
        raise NotImplementedError(f"{self.model_name} does not generate video")

    def check_health(self, losses):
        """After each step, with train_step's values: a subclass's health checks (trainer/health.py)."""

    def build_datasets(self):
        dataset_class = DATASETS.get(self.config["dataset_class"])
        return dataset_class(self.config, "train"), dataset_class(self.config, "val")

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def main_network_name(self):
        return next(iter(self.networks))

    @staticmethod
    def unwrap(network):
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

    def optimize(self, name, loss):
        """Backward (scaled under fp16), then `step`."""
        self.check_finite(name, loss)
        self.scalers[name].scale(loss).backward()
        self.step(name)

    def check_finite(self, name, loss):
        """Stop on a non-finite loss, before it reaches the weights; the checkpoints are left as they are."""
        if not torch.isfinite(loss.detach()).all():
            # Resuming restores the checkpoint's optimizer, learning rate included: only a fresh
            # start takes a lower one, while --clip_grad_norm applies to a resumed run too.
            last = latest_checkpoint(self.checkpoint_dir)
            kept = "no checkpoint was saved yet: start again with a lower learning_rate or --clip_grad_norm=1"
            if last:
                kept = (f"the last checkpoint, {last}, is kept: run again with --clip_grad_norm=1 to go on from it, "
                        "or start over (--resume=false) with a lower learning_rate")
            raise TrainingError(f"the {name} loss became {loss.item()} at step {self.global_step + 1}; {kept}")

    def step(self, name):
        """Optional gradient clipping, optimizer step (unscaled under fp16), zero_grad."""
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        clip = self.config["clip_grad_norm"]
        if clip and clip > 0:
            scaler.unscale_(optimizer)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

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
        if train:   # an order fit() can resume mid-epoch; items seeded by their place in it
            sampler = ResumableSampler(len(dataset), self.config["seed"], dist_utils.rank(), dist_utils.world_size())
            dataset = SeededItems(dataset)
        elif dist_utils.is_distributed():
            sampler = DistributedSampler(dataset, shuffle=False)
        workers = self.config["num_workers"]
        generator = torch.Generator().manual_seed(self.config["seed"] + dist_utils.rank())
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=workers, worker_init_fn=seed_worker, generator=generator,
                          drop_last=train and len(dataset) >= batch_size * dist_utils.world_size(),
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)

    # ------------------------------------------------------------------ set-up
    def _amp_settings(self):
        amp = self.config["amp"]
        enabled = self.device.type == "cuda" if amp == "auto" else bool(amp)
        return enabled, {"bfloat16": torch.bfloat16, "float16": torch.float16}[self.config["amp_dtype"]]

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
            self.writer = SummaryWriter(os.path.join(self.results_dir, "tensorboard"))

    # ------------------------------------------------------------------ run records
    @property
    def run_record(self):
        """This run's settings, toolkit commit and library versions (utils.run_record)."""
        if self._run_record is None:
            self._run_record = run_record(self.config)
        return self._run_record

    def write_run_record(self, **extra):
        """results_dir/run.json: the run record, with `extra` facts (the checkpoint evaluated...)."""
        if dist_utils.is_main_process():
            write_json_atomic(os.path.join(self.results_dir, "run.json"), {**self.run_record, **extra})

    # ------------------------------------------------------------------ checkpoints
    def state(self, rng_states=None):
        """The checkpoint dict; `rng_states`: every rank's generators (default: this process's)."""
        main = self.main_network_name
        return {
            "state_dict": self.unwrap(self.networks[main]).state_dict(),
            "optimizer": self.optimizers[main].state_dict() if main in self.optimizers else {},
            "global_step": self.global_step,
            "global_epoch": self.global_epoch,
            "epoch_samples": self.epoch_samples,
            "networks": {n: self.unwrap(net).state_dict() for n, net in self.networks.items()},
            "optimizers": {n: opt.state_dict() for n, opt in self.optimizers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "rng": rng_states if rng_states is not None else [rng_state()],
            "model": self.model_name,
            # the last validation's means: preprocessing trusts a SyncNet expert for offsets by its accuracy
            "validation": dict(self.last_validation, step=self.last_validation_step) if self.last_validation else None,
            "config": self.run_record["config"],
            "run": self.run_record,
        }

    def save_checkpoint(self):
        rng_states = dist_utils.all_gather_object(rng_state())
        if dist_utils.is_main_process():
            path = checkpoint_path(self.checkpoint_dir, self.global_step)
            save_checkpoint_file(self.state(rng_states), path)
            for _, old in list_checkpoints(self.checkpoint_dir)[:-max(1, self.config["keep_checkpoints"])]:
                os.remove(old)
            logger.info("saved %s", path)
        dist_utils.barrier()

    def load_state(self, state, path="checkpoint", networks_only=False):
        """Restore networks and step counters (and, unless `networks_only`, optimizers, the position
        in the epoch and the random generators) from `state`."""
        if state.get("model") not in (None, self.model_name):
            raise CheckpointError(f"{path} is a {state['model']} checkpoint, not {self.model_name}")
        # A training checkpoint (networks, optimizers, counters, random state): resume reads it
        # whole. A network-only file (say official weights) gives the main network through
        # model.extract_state_dict, the loader's own reading of a state dict.
        networks = state.get("networks") or {self.main_network_name: extract_state_dict(self.model_name, state)}
        try:
            for name, network in self.networks.items():
                if name in networks:
                    self.unwrap(network).load_state_dict(networks[name])
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit this {self.model_name} configuration "
                                  f"({str(exc).splitlines()[0]})") from None
        self.global_step = int(state.get("global_step", 0))
        self.global_epoch = int(state.get("global_epoch", 0))
        if networks_only:
            return
        for name, optimizer in self.optimizers.items():
            if name in state.get("optimizers", {}):
                optimizer.load_state_dict(state["optimizers"][name])
        for name, scaler in self.scalers.items():
            if name in state.get("scalers", {}):
                scaler.load_state_dict(state["scalers"][name])
        # Older checkpoints lack these: such a run goes on from the start of its epoch, reseeded.
        self.epoch_samples = int(state.get("epoch_samples", 0))
        rng = state.get("rng") or []
        if len(rng) == dist_utils.world_size():
            self._resumed_rng = rng[dist_utils.rank()]
        elif rng:
            logger.info("%s was written by %d rank(s), this run has %d: the random generators start afresh",
                        path, len(rng), dist_utils.world_size())

    def load_checkpoint(self, path=None, networks_only=False):
        """Load `path`, or the newest checkpoint of this model; returns the path loaded."""
        path = path or latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise CheckpointError(f"no {self.model_name} checkpoint in {self.checkpoint_dir}/: run "
                                  f"`python run_talkingface.py --model={self.model_name} "
                                  f"--dataset={self.config['dataset']}` first")
        self.load_state(load_checkpoint_file(path, map_location=self.device), path, networks_only)
        return path

    def _newest_readable_checkpoint(self):
        """(path, state) of the newest checkpoint that loads, or (None, None); rank 0 decides and
        the other ranks load the same file. An unreadable one (a truncated copy, a full disk) is
        renamed to *.corrupt with one log line, and the one before it is used."""
        path, state = None, None
        if dist_utils.is_main_process():
            for _, candidate in reversed(list_checkpoints(self.checkpoint_dir)):
                try:
                    path, state = candidate, load_checkpoint_file(candidate, map_location=self.device)
                    break
                except CheckpointError:
                    path, aside = None, candidate + CORRUPT_SUFFIX
                    try:
                        os.replace(candidate, aside)
                    except OSError:     # a read-only folder: it is skipped by this run only
                        aside = None
                    logger.warning("%s cannot be read (a truncated or damaged file); %strying the checkpoint "
                                   "before it", candidate, f"renamed it to {os.path.basename(aside)}, " if aside else "")
        path = dist_utils.broadcast_object(path)
        if path is not None and state is None:
            state = load_checkpoint_file(path, map_location=self.device)
        return path, state

    def resume(self):
        """Apply `resume`: auto goes on from the latest checkpoint when there is one (a run that was
        interrupted, or a finished one given a larger max_steps), true insists on one, false starts
        over. Half-written checkpoints of a killed run are deleted first."""
        mode = self.config["resume"]
        if dist_utils.is_main_process():
            for stale in remove_stale_temp_files(self.checkpoint_dir):
                logger.info("removed %s, a checkpoint whose writing was interrupted", stale)
        dist_utils.barrier()
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
        interrupted = os.path.exists(os.path.join(self.checkpoint_dir, RUNNING_MARKER))
        latest, state = self._newest_readable_checkpoint() if latest is not None else (None, None)
        if latest is None:
            if mode is True or mode == "true":
                raise CheckpointError(f"resume=true but there is no checkpoint in {self.checkpoint_dir}/ to resume from "
                                      "(pass --resume=auto to start a new run when there is none)")
            return None
        self.load_state(state, latest)
        logger.info("resuming from %s (step %d, epoch %d; that run %s)", latest, self.global_step,
                    self.global_epoch, "was interrupted" if interrupted else "had finished")
        return latest

    # ------------------------------------------------------------------ the loop
    def fit(self, should_stop=None, on_step_end=None):
        """Train to max_steps, validating and saving checkpoints on their intervals.

        `should_stop()`: checked before each step; True ends training early, as reaching max_steps
        does (final validation, checkpoint). `on_step_end(losses)`: called after each step with
        train_step's values (self.global_step already counts the step).
        """
        config = self.config
        train_set, val_set = self.build_datasets()
        train_loader = self.build_dataloader(train_set, train=True)
        val_loader = self.build_dataloader(val_set, train=False)
        resumed_from = self.resume()
        max_steps = config["max_steps"]
        marker = os.path.join(self.checkpoint_dir, RUNNING_MARKER)
        if self.global_step >= max_steps:
            logger.info("%s is already trained to step %d (max_steps=%d): nothing to train; raise "
                        "--max_steps to go on or pass --resume=false to start over",
                        self.model_name, self.global_step, max_steps)
            if dist_utils.is_main_process() and os.path.exists(marker):
                os.remove(marker)   # it ended after its last checkpoint: nothing is left to resume
            return
        self._open_writer()
        self.write_run_record(resumed_from=resumed_from, resumed_at_step=self.global_step if resumed_from else None)
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
        if self._resumed_rng is not None:   # last, so that nothing above draws from the restored streams
            set_rng_state(self._resumed_rng)
            self._resumed_rng = None
        def finished():
            return self.global_step >= max_steps or (should_stop is not None and should_stop())

        try:  # closed before an error propagates: the entry point's `error:` line comes after the bar
            while not finished():
                train_loader.sampler.set_epoch(self.global_epoch, start=self.epoch_samples)
                for batch in train_loader:
                    self._set_mode(True)
                    losses = self.train_step(self.to_device(batch))
                    self.global_step += 1
                    self.epoch_samples += train_loader.batch_size
                    progress.update(1)
                    self.check_health(losses)
                    if on_step_end is not None:
                        on_step_end(losses)
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
                    if finished():
                        break
                else:
                    self.global_epoch += 1
                    self.epoch_samples = 0
        finally:
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
    @preserved_rng()
    def validate(self, loader):
        """Mean validation losses over (at most max_val_batches of) `loader`; the random generators
        are left as they were, so validating never changes what training draws next."""
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
        """Score the trained networks (the metrics in `metrics`): every rank hands them, unwrapped
        from DDP (whose forward would wait for the other ranks), to the Evaluator, which runs its
        share of the clips through the inference pipeline; rank 0 returns the merged results, the
        other ranks None."""
        self._set_mode(False)
        provenance = self._evaluation_provenance() if dist_utils.is_main_process() else None
        base, hr = (network.eval() if network is not None else None for network in self.inference_networks())
        return Evaluator(self.config).evaluate(LipSyncer(self.config, (base, hr)), split, provenance)

    def _evaluation_provenance(self):
        """The checkpoint facts metrics.json records (the checkpoint of this step, if saved)."""
        saved = dict(list_checkpoints(self.checkpoint_dir)).get(self.global_step)
        provenance = {"checkpoint": checkpoint_fingerprint(saved) if saved else {"path": None, "step": self.global_step},
                      "global_step": self.global_step}
        if getattr(self, "base_checkpoint", None):
            provenance["base_checkpoint"] = self.base_checkpoint
        return provenance

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
