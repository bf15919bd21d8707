"""`make gpu-check`: does this CUDA machine train, resume, run DDP, evaluate and infer? One JSON.

    python benchmarks/gpu_check.py [--budget-s 360] [--cases PATTERN ...] [--out results/gpu_check]
    python benchmarks/gpu_check.py --device cpu --quick     # the script's own check (tests/integration/test_gpu_check.py)

Without a CUDA device (and no --device) it prints one line and exits 0: there is nothing to check.

Cases (each recorded under "cases" with "ok", its measurements and, when it failed, "error": one
line; a case not started because the time budget ran out says "skipped": "time budget"):
- data: the demo set generated and preprocessed (the other cases need it and redo it if it failed).
- train:<model>:<fp32|fp16|bf16> for SyncNet, HyperLipsBase, HyperLipsHR@128 and @256: the real
  trainer's `train_step` (from the registry, with its own `amp` / `amp_dtype`) on random batches of
  the real shapes (bench_train.py's), at the model's YAML batch size: losses finite, every trained
  network's weights moved, seconds per step (torch.cuda.synchronize around the timed steps), peak
  GPU memory. fp16: GradScaler may skip the first steps while it finds its scale (warm-up, counted);
  no timed step may be skipped.
- resume:<model>: N steps straight against N/2 + resume + N/2, with `reproducible: true`, each run
  the real entry point (quick_start.run: data loader, fit, checkpoint, resume) as
  tests/integration/test_train_resume.py does on the CPU; weights and optimizer states compared. Not bitwise
  equal: a second straight run says whether the GPU's kernels themselves differ from run to run.
- ddp:1rank, ddp:2ranks (with two GPUs): torchrun, NCCL (gloo on the CPU), DistributedDataParallel
  training steps on a different batch per rank; the ranks must end with the same weights.
- evaluate:<model>: --mode=evaluate (random-init weights) on the demo set's val clip.
- infer:<model>: --mode=infer of a synthetic 1280x720 talking-face clip (harness.py, as
  bench_inference.py makes it), frames/s after a short warm-up run, for Base and HR 128/256/512.
- loader:<model>: training (fit) with the real data loader at the default num_workers: samples/s,
  and each step split into data wait (between two train_steps) and compute (inside train_step).
Each group of related cases runs in a child process of its own (a crashed or hung case cannot take
the other groups with it), and the time budget is enforced on the children: a case still running
when it ends is stopped and recorded as an error. --quick runs its cases in one child.
"""
import argparse
import fnmatch
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import harness

# As run_talkingface.py: idle OpenMP threads must not spin; the children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PRECISIONS = {"fp32": dict(amp=False), "fp16": dict(amp=True, amp_dtype="float16"),
              "bf16": dict(amp=True, amp_dtype="bfloat16")}
TRAIN_MODELS = ["SyncNet", "HyperLipsBase", "HyperLipsHR@128", "HyperLipsHR@256"]

# Cases run together in one child process, in this order.
GROUPS = [
    ["data"],
    *[[f"train:{model}:{precision}" for precision in PRECISIONS] for model in TRAIN_MODELS],
    ["resume:SyncNet", "resume:HyperLipsBase"],
    ["ddp:1rank", "ddp:2ranks"],
    ["evaluate:HyperLipsBase", "evaluate:HyperLipsHR@128"],
    ["infer:HyperLipsBase", "infer:HyperLipsHR@128", "infer:HyperLipsHR@256", "infer:HyperLipsHR@512"],
    ["loader:SyncNet", "loader:HyperLipsBase", "loader:HyperLipsHR@128"],
]

# Sizes on a GPU, chosen to fit the 6-minute budget (--budget-s 360) on one GPU: the demo set at
# its YAML size, the training steps at the YAML batch sizes (the memory a real run needs) but only
# 1 warm-up + 5 timed steps, short resume runs, 4 s of 720p per inference mode plus a 1 s warm-up,
# 20 loader steps per model. No GPU run has been recorded yet: the report's "seconds" per case
# (python benchmarks/gpu_check.py) will say whether they fit.
FULL = dict(
    demo={},                                    # demo.yaml: 8 clips of 3 s
    train_batch={},                             # the model's YAML batch size
    train_steps=5, fp16_warmup_max=12,          # GradScaler halves its scale (init 65536) per skipped step
    resume={"SyncNet": dict(batch_size=16, samples_per_epoch=48, max_steps=8),       # 3 batches an epoch
            "HyperLipsBase": dict(batch_size=4, samples_per_epoch=16, max_steps=6)},  # resumed mid-epoch
    ddp=dict(model="HyperLipsBase", batch_size=4, steps=5),
    evaluate=dict(eval_max_frames=0),           # the whole val clip, every metric whose weights are there
    infer=dict(seconds=4.0, width=1280, height=720, face_px=360, warmup_seconds=1.0),
    loader=dict(steps=20, overrides={}),
)
# --quick (with --device cpu: the test): the smallest sizes that still run every line, and only the
# cases cheap on a CPU (fp16 and bf16 autocast are emulated there, far slower); the others are
# listed as skipped.
QUICK = dict(
    demo=dict(demo_num_clips=2, demo_clip_seconds=1.0,    # 1 train and 1 val clip of 25 frames,
              num_preprocess_workers=1),                   # preprocessed in the process (no pool start-up)
    train_batch={"SyncNet": 2, "HyperLipsBase": 1, "HyperLipsHR": 1},   # SyncNet's BatchNorm needs 2
    train_steps=1, fp16_warmup_max=12,
    resume={"SyncNet": dict(batch_size=2, samples_per_epoch=6, max_steps=2, num_workers=0),
            "HyperLipsBase": dict(batch_size=1, samples_per_epoch=3, max_steps=2, num_workers=0)},
    ddp=dict(model="SyncNet", batch_size=2, steps=1),
    evaluate=dict(eval_max_frames=6, metrics=["PSNR", "SSIM"]),
    infer=dict(seconds=0.6, width=320, height=180, face_px=120, warmup_seconds=0.2),
    loader=dict(steps=3, overrides=dict(batch_size=4)),
    cases=["data", "train:SyncNet:fp32", "train:SyncNet:bf16", "resume:SyncNet", "ddp:1rank",
           "evaluate:HyperLipsBase", "infer:HyperLipsBase", "loader:SyncNet"],
)
DDP_TIMEOUT_S = 240        # a hung NCCL rank must not eat the whole budget
NO_GPU = "gpu-check: no CUDA device (torch.cuda.is_available() is False): nothing to check"


# ---------------------------------------------------------------------------------- helpers
def one_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def slug(text):
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "device"


def split_model(spec):
    """"HyperLipsHR@256" -> ("HyperLipsHR", 256); the size defaults to 128."""
    model, _, size = spec.partition("@")
    return model, int(size or 128)


def synchronize(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    import torch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    """{"peak_gpu_memory_mb": ...} since the last reset_peak (nothing on the CPU)."""
    import torch
    if device.type != "cuda":
        return {}
    return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)}


def free_memory():
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rounded(values, digits=5):
    return {k: float(f"{float(v):.{digits}g}") for k, v in values.items()}


def all_finite(values):
    return all(math.isfinite(float(v)) for v in values.values())


class Case:
    """Where a case's files go and the settings every run of it shares."""

    def __init__(self, name, args):
        self.name, self.args = name, args
        self.sizes = QUICK if args.quick else FULL
        self.folder = os.path.join(args._root, slug(name))
        os.makedirs(self.folder, exist_ok=True)

    def settings(self, **extra):
        """Config overrides: the shared demo set, this case's own checkpoints and results."""
        data = os.path.join(self.args._root, "demo")
        return dict(data_root=os.path.join(data, "data"), preprocessed_root=os.path.join(data, "preprocessed"),
                    **self.sizes["demo"], device=self.args.device,
                    checkpoint_root=os.path.join(self.folder, "checkpoints"),
                    results_root=os.path.join(self.folder, "results"), **extra)

    def random_network(self, name, rescaling=1):
        """A random-init checkpoint of network `name` in this case's folder (as bench_inference.py)."""
        import torch

        from talkingface.model import build_network
        from talkingface.utils.checkpoint import checkpoint_path, save_checkpoint_file
        path = checkpoint_path(os.path.join(self.folder, f"random_{name}_{rescaling}"), 1)
        if not os.path.exists(path):
            torch.manual_seed(0)
            save_checkpoint_file({"state_dict": build_network(name, rescaling).state_dict()}, path)
        return path

    def inference_checkpoints(self, model, size):
        """checkpoint (and base_checkpoint for HR) settings with random-init weights."""
        base = self.random_network("HyperLipsBase")
        if model == "HyperLipsBase":
            return dict(checkpoint=base)
        return dict(checkpoint=self.random_network("HRDecoder", size // 128), base_checkpoint=base)


# ---------------------------------------------------------------------------------- the cases
def check_data(case):
    from talkingface.config import Config
    from talkingface.data.dataset.clip import read_filelist
    from talkingface.quick_start.quick_start import preprocess
    config = Config(model="HyperLipsBase", dataset="demo", config_dict=case.settings())
    preprocess(config)
    clips = {split: len(read_filelist(config, split)) for split in ("train", "val", "test")}
    result = {"clips": clips}
    if not clips["train"] or not clips["val"]:
        result["error"] = f"the demo set has no train or val clip: {clips}"
    return result


def trained_parameters(trainer):
    """A CPU copy of every trainable parameter, per trained network."""
    return {name: [p.detach().to("cpu", copy=True) for p in trainer.unwrap(net).parameters() if p.requires_grad]
            for name, net in trainer.networks.items()}


def largest_change(before, after):
    return {name: max((float((a - b).abs().max()) for a, b in zip(after[name], before[name])), default=0.0)
            for name in before}


def grad_scales(trainer):
    return {name: scaler.get_scale() for name, scaler in trainer.scalers.items() if scaler.is_enabled()}


def skipped(before, after):
    """GradScaler halves its scale exactly when it skipped a step (inf/NaN gradients)."""
    return any(after[name] < before[name] for name in before)


def check_train(case, spec, precision):
    """A few train_steps of the real trainer in one precision."""
    from bench_train import synthetic_batch

    from talkingface.config import Config
    from talkingface.quick_start.quick_start import build_trainer

    model, size = split_model(spec)
    sizes = case.sizes
    overrides = dict(PRECISIONS[precision])
    batch_size = sizes["train_batch"].get(model)
    if batch_size:
        overrides["batch_size"] = batch_size
    if model == "HyperLipsHR":
        overrides["img_size"] = size
    if model == "HyperLipsBase":
        overrides["sync_expert_path"] = case.random_network("SyncNet")
    config = Config(model=model, dataset="demo", config_dict=case.settings(**overrides))
    trainer = build_trainer(config)
    device = trainer.device
    batch = synthetic_batch(model, config["batch_size"], device, hr_size=size)
    trainer._set_mode(True)
    reset_peak(device)
    # Warm-up (optimizer state, cuDNN), repeated under fp16 while GradScaler skips steps to find its scale.
    warm_up, warmup_skipped = time.perf_counter(), 0
    for _ in range(sizes["fp16_warmup_max"]):
        before = grad_scales(trainer)
        trainer.train_step(batch)
        if not skipped(before, grad_scales(trainer)):
            break
        warmup_skipped += 1
    synchronize(device)
    warm_up = time.perf_counter() - warm_up
    weights = trained_parameters(trainer)
    start_scales = grad_scales(trainer)
    steps, skipped_steps, losses = sizes["train_steps"], 0, []
    start = time.perf_counter()
    for _ in range(steps):
        before = grad_scales(trainer)
        losses.append(trainer.train_step(batch))
        skipped_steps += skipped(before, grad_scales(trainer))
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    moved = largest_change(weights, trained_parameters(trainer))
    result = {"precision": precision, "amp": str(trainer.amp_dtype) if trainer.amp_enabled else "off",
              "batch": config["batch_size"], "steps": steps, "seconds_per_step": round(seconds, 4),
              "samples_per_s": round(config["batch_size"] / seconds, 2), "warmup_seconds": round(warm_up, 2),
              "losses": rounded(losses[-1]), "losses_finite": all(all_finite(step) for step in losses),
              "weights_max_abs_change": {k: float(f"{v:.3g}") for k, v in moved.items()}, **peak_memory(device)}
    failures = []
    if not result["losses_finite"]:
        failures.append("a loss is not finite")
    failures += [f"the {name} weights did not move" for name, change in moved.items() if not change > 0]
    if start_scales:
        result.update(grad_scale={"start": start_scales, "end": grad_scales(trainer)},
                      warmup_skipped_steps=warmup_skipped, skipped_steps=skipped_steps)
        if warmup_skipped == sizes["fp16_warmup_max"]:
            failures.append(f"GradScaler skipped all {warmup_skipped} warm-up steps (inf/NaN gradients)")
        if skipped_steps:
            failures.append(f"GradScaler skipped {skipped_steps} of {steps} timed steps")
    if failures:
        result["error"] = "; ".join(failures)
    return result


def state_difference(a, b):
    """(bitwise equal, max abs difference, first differing key) of two checkpoints' networks and
    optimizer states."""
    import torch
    equal, largest, first = a["global_step"] == b["global_step"], 0.0, None

    def compare(key, x, y):
        nonlocal equal, largest, first
        if torch.is_tensor(x):
            if x.shape != y.shape:
                difference = math.inf
            elif torch.equal(x, y):
                return
            else:
                difference = float((x.double() - y.double()).abs().max()) if x.is_floating_point() else math.inf
            equal, largest, first = False, max(largest, difference), first or key
        elif isinstance(x, dict):
            for k in x:
                compare(f"{key}.{k}", x[k], y[k])

    for part in ("networks", "optimizers"):
        for name in a[part]:
            compare(f"{part}.{name}", a[part][name], b[part][name])
    return equal, largest, first


def check_resume(case, model):
    """Straight to N steps against N/2 + resume to N, each run the real entry point."""
    import torch

    from talkingface.quick_start.quick_start import run
    from talkingface.utils.checkpoint import latest_checkpoint

    plan = case.sizes["resume"][model]
    steps = plan["max_steps"]
    extra = dict(plan, eval_batch_size=plan["batch_size"], reproducible=True, evaluate_after_training=False,
                 eval_interval=10 ** 6, checkpoint_interval=10 ** 6, max_val_batches=1, log_interval=1,
                 keep_checkpoints=10)
    if model == "HyperLipsBase":
        extra["sync_expert_path"] = case.random_network("SyncNet")

    def train(run_name, max_steps):
        values = case.settings(**dict(extra, max_steps=max_steps))
        values.update(checkpoint_root=os.path.join(case.folder, run_name, "checkpoints"),
                      results_root=os.path.join(case.folder, run_name, "results"))
        run(model, "demo", config_dict=values)
        path = latest_checkpoint(os.path.join(values["checkpoint_root"], "demo", model))
        return torch.load(path, map_location="cpu", weights_only=True)

    device = torch.device(case.args.device)
    reset_peak(device)
    straight = train("straight", steps)
    train("resumed", steps // 2)
    resumed = train("resumed", steps)
    equal, difference, where = state_difference(resumed, straight)
    result = {"steps": f"{steps} straight vs {steps // 2} + resume + {steps - steps // 2}",
              "batch": plan["batch_size"], "bitwise_equal": equal, **peak_memory(device)}
    if equal:
        return result
    result.update(max_abs_difference=float(f"{difference:.3g}"), first_difference=where)
    # Is it the resume, or do two identical runs on this GPU differ as well?
    repeat_equal, repeat_difference, _ = state_difference(train("straight_again", steps), straight)
    repeat_difference = 0.0 if repeat_equal else repeat_difference
    result["straight_repeat_max_abs_difference"] = float(f"{repeat_difference:.3g}")
    if repeat_equal or difference > 10 * repeat_difference:
        result["error"] = (f"the resumed run differs from the straight one by {difference:.3g} ({where}), "
                           f"two straight runs by {repeat_difference:.3g}: resume is not exact")
    else:
        result["reason"] = ("nondeterministic GPU kernels: two straight runs differ as much (reproducible: true "
                            "makes cuDNN deterministic, not every CUDA kernel)")
    return result


def check_ddp(case, ranks):
    """torchrun with `ranks` processes running this script's --_ddp_rank."""
    import torch
    gpus = torch.cuda.device_count() if case.args.device.startswith("cuda") else 0
    if ranks > 1 and ranks > gpus:   # one rank runs on the CPU too (gloo): the script's own test
        return {"skipped": f"needs {ranks} GPUs, this machine has {gpus}"}
    expert = case.random_network("SyncNet")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               os.path.abspath(__file__), "--_ddp_rank", "--device", case.args.device, "--_root", case.args._root,
               "--_expert", expert, *(["--quick"] if case.args.quick else [])]
    timeout = max(1.0, min(DDP_TIMEOUT_S, case.args._deadline - time.monotonic()))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=harness.REPO_ROOT)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)     # torchrun passes it on to its ranks
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
        return {"error": f"torchrun with {ranks} rank(s) did not finish within {timeout:.0f} s (a hang?)"}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        tail = [line for line in err.strip().splitlines() if line.strip()]
        return {"error": f"torchrun exited with {process.returncode}: {tail[-1] if tail else 'no output'}"[:400]}
    return json.loads(lines[-1])


def exit_with_parent():
    """torchrun starts its ranks in sessions of their own: when the time budget kills it, a rank
    (perhaps hung in NCCL) must not live on."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def ddp_rank(args):
    """One torchrun rank: DDP training steps on this rank's part of a batch; rank 0 prints the JSON."""
    exit_with_parent()
    import torch
    import torch.distributed as dist
    from bench_train import synthetic_batch
    from torch.nn.parallel import DistributedDataParallel

    from talkingface.config import Config
    from talkingface.quick_start.quick_start import build_trainer
    from talkingface.utils import distributed as dist_utils

    plan = (QUICK if args.quick else FULL)["ddp"]
    model, steps, per_rank = plan["model"], plan["steps"], plan["batch_size"]
    root = os.path.join(args._root, "ddp", os.environ["WORLD_SIZE"] + "ranks")
    config = Config(model=model, dataset="demo", config_dict=dict(
        device=args.device, batch_size=per_rank, sync_expert_path=args._expert,
        checkpoint_root=os.path.join(root, "checkpoints"), results_root=os.path.join(root, "results")))
    config["device"] = dist_utils.setup_distributed(config["device"])
    if not dist_utils.is_distributed():
        # One rank: run_talkingface.py trains it without DDP (setup_distributed wants WORLD_SIZE > 1);
        # the check joins the process group itself, so that DDP over NCCL runs all the same.
        if config["device"].type == "cuda":
            config["device"] = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(config["device"])
        dist.init_process_group("nccl" if config["device"].type == "cuda" else "gloo")
    rank, world = dist_utils.rank(), dist_utils.world_size()
    trainer = build_trainer(config)   # seeded with seed + rank: DDP must broadcast rank 0's weights
    device = trainer.device
    wrapped = sorted(n for n, net in trainer.networks.items() if isinstance(net, DistributedDataParallel))
    whole = synthetic_batch(model, per_rank * world, device)
    batch = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in whole.items()}  # another batch per rank
    trainer._set_mode(True)
    reset_peak(device)
    trainer.train_step(batch)   # warm-up
    synchronize(device)
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        losses.append(trainer.train_step(batch))
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    weights = torch.cat([p.detach().float().flatten() for net in trainer.networks.values()
                         for p in trainer.unwrap(net).parameters()])
    reference = weights.clone()
    dist.broadcast(reference, src=0)
    differences = dist_utils.all_gather_object(float((weights - reference).abs().max()))
    if rank == 0:
        result = {"model": model, "world_size": world, "backend": dist.get_backend(), "ddp_networks": wrapped,
                  "batch_per_rank": per_rank, "steps": steps, "seconds_per_step": round(seconds, 4),
                  "samples_per_s": round(per_rank * world / seconds, 2), "losses": rounded(losses[-1]),
                  "losses_finite": all(all_finite(step) for step in losses),
                  "ranks_max_abs_difference": max(differences), **peak_memory(device)}
        failures = []
        if not wrapped:
            failures.append("no network is wrapped in DistributedDataParallel")
        if not result["losses_finite"]:
            failures.append("a loss is not finite")
        if max(differences) > 1e-6:
            failures.append(f"the ranks' weights differ by {max(differences):.3g}")
        if failures:
            result["error"] = "; ".join(failures)
        harness.print_child_result(result)
    dist_utils.cleanup_distributed()


def check_evaluate(case, spec):
    """--mode=evaluate (quick_start.run) of random-init weights on the demo set's val clip."""
    import torch

    from talkingface.quick_start.quick_start import run
    model, size = split_model(spec)
    values = case.settings(mode="evaluate", eval_split="val", eval_num_sample_videos=0,
                           sync_expert_path=case.random_network("SyncNet"), **case.inference_checkpoints(model, size),
                           **case.sizes["evaluate"])
    device = torch.device(case.args.device)
    reset_peak(device)
    results = run(model, "demo", config_dict=values)
    mean = {k: v for k, v in results["mean"].items() if isinstance(v, (int, float))}
    result = {"clips": results["clips"], "frames": results["frames"], "mean": rounded(mean, 4),
              "not_finite": sorted(k for k, v in mean.items() if not math.isfinite(v)),
              "metrics_skipped": results["skipped"], "seconds": results["seconds"], **peak_memory(device)}
    if not results["frames"]:
        result["error"] = "no frame was scored"
    return result


def check_infer(case, spec):
    """--mode=infer (quick_start.run) of the synthetic clip: a short warm-up run, then the timed one."""
    import torch

    from talkingface.quick_start.quick_start import run
    from talkingface.utils.audio import SAMPLE_RATE, load_audio, save_wav

    model, size = split_model(spec)
    plan = case.sizes["infer"]
    clips = os.path.join(case.args._root, "clips")
    os.makedirs(clips, exist_ok=True)
    video = harness.synthetic_talking_video(os.path.join(clips, f"synthetic_{plan['width']}x{plan['height']}.mp4"),
                                            plan["seconds"], plan["width"], plan["height"], plan["face_px"])
    warm_audio = os.path.join(clips, "warm_up.wav")
    if not os.path.exists(warm_audio):
        save_wav(warm_audio, load_audio(video)[:int(plan["warmup_seconds"] * SAMPLE_RATE)])
    values = case.settings(mode="infer", video=video, audio=video, output=os.path.join(case.folder, "out.mp4"),
                           **case.inference_checkpoints(model, size))
    if model == "HyperLipsHR":
        values["img_size"] = size
    run(model, "demo", config_dict=dict(values, audio=warm_audio, output=os.path.join(case.folder, "warm_up.mp4")))
    device = torch.device(case.args.device)
    reset_peak(device)
    start = time.perf_counter()
    result = run(model, "demo", config_dict=values)
    synchronize(device)
    seconds = time.perf_counter() - start
    facts = {"video": f"{plan['width']}x{plan['height']}", "frames": result.n_frames, "seconds": round(seconds, 2),
             "frames_per_s": round(result.n_frames / seconds, 2), **peak_memory(device)}
    if not result.n_frames or not os.path.getsize(values["output"]):
        facts["error"] = "no output frames"
    return facts


def check_loader(case, spec):
    """fit() with the real data loader, train_step timed inside (compute) and between (data wait)."""
    from talkingface.quick_start.quick_start import build_config, build_trainer, preprocess

    model, size = split_model(spec)
    plan = case.sizes["loader"]
    steps = plan["steps"]
    overrides = dict(max_steps=steps, eval_interval=10 ** 6, checkpoint_interval=10 ** 6, log_interval=steps,
                     max_val_batches=1, evaluate_after_training=False)
    if model == "HyperLipsBase":
        overrides["sync_expert_path"] = case.random_network("SyncNet")
    if model == "HyperLipsHR":   # its data is made from a (random-init) Base checkpoint, as a real run's
        overrides.update(img_size=size, base_checkpoint=case.random_network("HyperLipsBase"))
    config = build_config(model, "demo", config_dict=case.settings(**overrides, **plan["overrides"]))
    preprocess(config)
    trainer = build_trainer(config)
    device = trainer.device
    compute, waits, last_end = [], [], None
    train_step = trainer.train_step

    def timed_step(batch):
        nonlocal last_end
        synchronize(device)     # the batch's copy to the GPU counts as data wait
        start = time.perf_counter()
        if last_end is not None:
            waits.append(start - last_end)
        values = train_step(batch)
        synchronize(device)
        last_end = time.perf_counter()
        compute.append(last_end - start)
        return values

    trainer.train_step = timed_step
    reset_peak(device)
    try:
        trainer.fit()
    finally:
        trainer.close()
    compute = compute[1:]   # the first step warms up (workers, allocator, cuDNN)
    if not compute:
        return {"error": f"only {len(waits) + 1} step(s) ran: the loader case needs 2 or more"}
    step = (sum(compute) + sum(waits)) / len(compute)
    wait_share = sum(waits) / (sum(compute) + sum(waits))
    return {"num_workers": config["num_workers"], "batch": config["batch_size"], "steps": steps,
            "samples_per_s": round(config["batch_size"] / step, 2),
            "data_wait_ms": round(1000 * sum(waits) / len(waits), 2),
            "compute_ms": round(1000 * sum(compute) / len(compute), 2),
            "data_wait_share": round(wait_share, 3), "loader_keeps_up": wait_share < 0.1, **peak_memory(device)}


def run_case(name, args):
    kind, _, spec = name.partition(":")
    case = Case(name, args)
    if kind == "data":
        return check_data(case)
    if kind == "train":
        model, precision = spec.rsplit(":", 1)
        return check_train(case, model, precision)
    if kind == "ddp":
        return check_ddp(case, int(spec[0]))
    return {"resume": check_resume, "evaluate": check_evaluate, "infer": check_infer,
            "loader": check_loader}[kind](case, spec)


def child(args):
    """Run `args._cases` here, one JSON line per case as it ends (a killed child keeps the earlier ones)."""
    from talkingface.utils.runtime import keep_freed_memory
    keep_freed_memory()  # as run_talkingface.py does
    import logging
    logging.getLogger("talkingface").setLevel(logging.WARNING)
    args._deadline = time.monotonic() + args._budget
    for name in args._cases:
        if time.monotonic() >= args._deadline:
            result = {"skipped": "time budget"}
        else:
            started = time.perf_counter()
            try:
                result = run_case(name, args)
            except Exception as exc:  # noqa: BLE001 - a failed case is a result, the next case still runs
                result = {"error": one_line(exc)}
            finally:
                free_memory()   # the next case's peak GPU memory is its own
            if "skipped" not in result:
                result = {"ok": "error" not in result, **result,
                          "case_seconds": round(time.perf_counter() - started, 1)}
        harness.print_child_result({"case": name, "result": result})


# ---------------------------------------------------------------------------------- the parent
def run_group(cases, args, root, remaining):
    """The cases in one child process; {case: result}. When the budget runs out, the case then
    running is stopped (an error) and the later ones are skipped; a crash is an error line for
    each case that had not reported."""
    command = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--_root", root,
               "--_budget", str(remaining), "--_cases", *cases, *(["--quick"] if args.quick else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=harness.REPO_ROOT, start_new_session=True)
    try:
        out, err = process.communicate(timeout=remaining)
        failure = None
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)   # the child and its DataLoader workers
        out, err = process.communicate()
        failure = "stopped: the time budget ran out during this case"
    results = {}
    for line in out.splitlines():
        try:
            item = json.loads(line) if line.startswith('{"case"') else None
        except ValueError:
            item = None
        if item and item.get("case") in cases:
            results[item["case"]] = item["result"]
    if failure is None and process.returncode != 0:
        tail = [line for line in err.strip().splitlines() if line.strip()]
        failure = f"the child process exited with {process.returncode}: {tail[-1] if tail else 'no output'}"[:400]
    unfinished = [name for name in cases if name not in results]
    for index, name in enumerate(unfinished):
        if failure and failure.startswith("stopped") and index > 0:
            results[name] = {"skipped": "time budget"}
        else:
            results[name] = {"ok": False, "error": failure or "no result"}
    return results


def selected(name, patterns):
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA, else say so and exit 0) | cuda | cuda:N | cpu")
    parser.add_argument("--budget-s", type=float, default=360.0, help="time budget of the whole run, seconds")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and only the cases cheap on a CPU (the script's own test)")
    parser.add_argument("--cases", nargs="+", metavar="PATTERN",
                        help="run only the cases matching these patterns, e.g. 'train:*' 'infer:*'")
    parser.add_argument("--out", default=os.path.join(harness.REPO_ROOT, "results", "gpu_check"),
                        help="folder of the JSON reports (<timestamp>_<device>.json)")
    parser.add_argument("--_cases", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--_root", help=argparse.SUPPRESS)
    parser.add_argument("--_budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--_ddp_rank", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_expert", help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = time.monotonic()
    if args._ddp_rank:
        return ddp_rank(args)
    if args._cases:
        return child(args)

    import torch
    if args.device == "auto" or args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(NO_GPU)
            return 0
        args.device = "cuda" if args.device == "auto" else args.device
    patterns = args.cases or (QUICK["cases"] if args.quick else ["*"])
    report = dict(harness.header(args.device), cuda=torch.version.cuda,
                  cudnn=torch.backends.cudnn.version() if args.device.startswith("cuda") else None,
                  gpus=torch.cuda.device_count(), quick=args.quick, budget_s=args.budget_s, cases={})
    results = {}
    # --quick runs its few cases in one child: on a CPU a child's start-up (Python, torch) is
    # comparable to a quick case.
    groups = [sum(GROUPS, [])] if args.quick else GROUPS
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as root:
        for group in groups:
            chosen = [name for name in group if selected(name, patterns)]
            for name in group:
                if name not in chosen:
                    results[name] = {"skipped": "not run with --quick" if args.quick and not args.cases
                                     else "not selected (--cases)"}
            remaining = args.budget_s - (time.monotonic() - started)
            if not chosen:
                continue
            if remaining <= 0:
                results.update({name: {"skipped": "time budget"} for name in chosen})
                continue
            results.update(run_group(chosen, args, root, remaining))
    report["cases"] = {name: results[name] for group in GROUPS for name in group}   # in the plan's order
    results = report["cases"].values()
    report["summary"] = {"ok": sum(r.get("ok") is True for r in results),
                         "failed": sum(r.get("ok") is False for r in results),
                         "skipped": sum("skipped" in r for r in results)}
    report["failed"] = [name for name, r in report["cases"].items() if r.get("ok") is False]
    report["seconds"] = round(time.monotonic() - started, 1)
    report["load_average_1min_at_end"] = harness.load_average()

    from talkingface.evaluator.report import json_safe
    from talkingface.utils.files import write_json_atomic
    report = json_safe(report)
    path = os.path.join(args.out, f"{time.strftime('%Y%m%d_%H%M%S')}_{slug(report['device'])}.json")
    report["written_to"] = path
    write_json_atomic(path, report)
    print(json.dumps(report, indent=2), flush=True)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
