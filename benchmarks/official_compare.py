"""Compare our HyperLips networks with the official code: same weights -> same outputs; speed.

    .venv/bin/python benchmarks/official_compare.py --official /path/to/hyperlips_official

For every network (Base 4-D and 5-D in eval and train mode, SyncNet, both discriminators,
HRDecoder 128/256/512) it builds the official and our network, fills the official one with the
deterministic weights of tests/unit/model/test_networks_equivalence.py, loads the official state dict into
ours through `talkingface.model.load_network` (official checkpoint format, with "module."
prefixes), and reports the max abs difference of the outputs (and, for Base, of the parameter
gradients of an L1 loss). It also runs one WHOLE training step of Base (generator, frozen expert,
discriminator, both optimizers) and of HR, the official script's step against our trainer's
train_step, and reports the difference of their gradients next to the official step's against
itself with one more thread.

Then it times, on the CPU, per network a training step (forward + backward + Adam step, each
side's Adam as its training code builds it) and no-grad inference, and the two whole steps, twice:
- timing_same_process: both implementations in this process, interleaved, with the same malloc
  setting (--allocator, default tuned): the networks' and the trainer's own speed;
- timing_as_run: each in a fresh process as its users run it: the official code with glibc's
  default malloc, ours with the setting run_talkingface.py applies (talkingface/utils/runtime.py).
The speed ratio is official seconds / our seconds. Inference rows also give each implementation's
GFLOP per frame (torch.utils.flop_counter) and the GFLOP/s it achieved.

Timing: the process CPU time of each call (time.process_time, min over --repeats) is the main
figure, because wall time on a shared machine mostly measures the other processes; wall times are
reported too. --threads sets torch's intra-op threads (default 1, the most stable). Timed cases:
HyperLipsBase at 128 (train B=2,T=5; inference --frames frames), SyncNet (train 8), the Base
discriminator (2x5 frames), HRDecoder x4 (128 -> 512), the HR discriminator at 512 and
HyperLipsBase_full_training_step (B=2, T=5) and HyperLipsHR_full_training_step (B=2 at 256 px,
without the two feature losses, whose weights are not shipped).

Regenerate the committed test fixture (official outputs for the recipe's weights and inputs):

    .venv/bin/python benchmarks/official_compare.py --official /path/to/hyperlips_official \
        --write-fixture tests/data/networks_official_reference.npz --skip-timing

The official code imports torchvision (whose import fails beside the CPU torch build here); it only
needs `transforms.functional.normalize` and the names `models.resnet.{ResNet,Bottleneck}`, so a
tiny in-memory stand-in is put in sys.modules before importing it (no file is written for it).
"""
import argparse
import os
import sys
import tempfile
import time
import types

import numpy as np
import torch
from torch import nn

import harness  # puts the repository on sys.path

from talkingface.model import load_network  # noqa: E402
from talkingface.trainer.trainer import adam  # noqa: E402
from talkingface.utils.gradients import GradientRecorder, relative_difference  # noqa: E402
from talkingface.utils.runtime import keep_freed_memory  # noqa: E402


def load_recipe():
    """The deterministic weights and inputs the networks test uses too (network_recipe.py)."""
    import network_recipe
    return network_recipe


def install_torchvision_standin():
    if "torchvision" in sys.modules:
        return

    def normalize(x, mean, std):
        mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.models", "torchvision.models.resnet"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["torchvision.transforms.functional"].normalize = normalize
    modules["torchvision.models.resnet"].ResNet = type("ResNet", (nn.Module,), {})
    modules["torchvision.models.resnet"].Bottleneck = type("Bottleneck", (nn.Module,), {})
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    sys.modules.update(modules)


def load_official(path):
    install_torchvision_standin()
    sys.path.insert(0, path)
    from models import model_hyperlips, syncnet  # the official package `models`
    return {
        "HyperLipsBase": model_hyperlips.HyperLipsBase,
        "SyncNet": syncnet.SyncNet_color,
        "BaseDiscriminator": model_hyperlips.HyperCtrolDiscriminator,
        "HRDiscriminator": model_hyperlips.HRDecoder_disc_qual,
        "HRDecoder": model_hyperlips.HRDecoder,
    }


def official_network(official, name, rescaling, recipe):
    network = official[name](rescaling) if name == "HRDecoder" else official[name]()
    network.load_state_dict(recipe.deterministic_state_dict(network.state_dict()))
    return network


def ours_from(official_net, name):
    """Our network, loaded from an official-format checkpoint dict saved under DataParallel."""
    checkpoint = {"state_dict": {"module." + k: v.clone() for k, v in official_net.state_dict().items()},
                  "global_step": 0, "global_epoch": 0}
    return load_network(name, checkpoint)


def max_diff(a, b):
    if isinstance(a, (tuple, list)):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return float((a.detach() - b.detach()).abs().max())


def compare_outputs(official, recipe):
    g = torch.Generator().manual_seed(7)
    mel = lambda *s: torch.rand(*s, generator=g) * 8 - 4  # noqa: E731

    def face(*shape):
        x = torch.rand(*shape, generator=g)
        x[:, :3, ..., shape[-2] // 2:, :] = 0
        return x

    cases = [
        ("base_4d", "HyperLipsBase", 1, (mel(4, 1, 80, 16), face(4, 6, 128, 128))),
        ("base_5d", "HyperLipsBase", 1, (mel(2, 5, 1, 80, 16), face(2, 6, 5, 128, 128))),
        ("syncnet", "SyncNet", 1, (mel(4, 1, 80, 16), torch.rand(4, 15, 64, 128, generator=g))),
        ("base_discriminator", "BaseDiscriminator", 1, (torch.rand(2, 3, 5, 128, 128, generator=g),)),
        ("hr_discriminator", "HRDiscriminator", 1, (torch.rand(2, 3, 256, 256, generator=g),)),
        ("hr_decoder_128", "HRDecoder", 1, (face(2, 6, 128, 128),)),
        ("hr_decoder_256", "HRDecoder", 2, (face(2, 6, 128, 128),)),
        ("hr_decoder_512", "HRDecoder", 4, (face(2, 6, 128, 128),)),
    ]
    diffs, gradient_diffs = {}, {}
    for case, name, rescaling, inputs in cases:
        theirs = official_network(official, name, rescaling, recipe)
        ours = ours_from(theirs, name)
        for mode in ("eval", "train"):
            theirs.train(mode == "train")
            ours.train(mode == "train")
            with torch.no_grad():
                diffs[f"{case}_{mode}"] = max_diff(theirs(*inputs), ours(*inputs))
        if name == "HyperLipsBase" and case == "base_5d":
            gradient_diffs["base_5d_train_param_grads_relative"], \
                gradient_diffs["official_vs_itself_other_thread_count"] = compare_gradients(theirs, ours, inputs)
    return diffs, gradient_diffs


def compare_gradients(theirs, ours, inputs):
    """Parameter gradients of an L1 loss (train mode): max abs difference relative to the largest
    gradient value, for ours vs official and, as the float noise floor, for the official network
    against itself with a different thread count (a different summation order)."""
    def gradients(network, threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            network.train()
            network.zero_grad()
            (network(*inputs) - 0.5).abs().mean().backward()
            return {k: p.grad.clone() for k, p in network.named_parameters()}
        finally:
            torch.set_num_threads(previous)

    threads = torch.get_num_threads()
    reference = gradients(theirs, threads)
    largest = max(float(g.abs().max()) for g in reference.values())

    def relative(other):
        return max(float((reference[k] - other[k]).abs().max()) for k in reference) / largest

    return relative(gradients(ours, threads)), relative(gradients(theirs, 2 if threads == 1 else 1))


def write_fixture(official, recipe, path):
    arrays = {}
    for case, (name, rescaling, train, inputs) in sorted(recipe.fixture_cases().items()):
        network = official_network(official, name, rescaling, recipe).train(train)
        with torch.no_grad():
            summary = recipe.summarize(network(*inputs))
        for key, value in summary.items():
            arrays[f"{case}/{key}"] = value
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(path, **arrays)
    return {"fixture": path, "bytes": os.path.getsize(path), "cases": len(recipe.fixture_cases())}


# ---- timing ----------------------------------------------------------------------------------
def timed(fn, results, key):
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    results.setdefault(key, {"wall": [], "cpu": []})
    results[key]["wall"].append(time.perf_counter() - wall)
    results[key]["cpu"].append(time.process_time() - cpu)


def timing_cases(frames, generator):
    """name -> (network, rescaling, train inputs, train loss, inference inputs, frames per call)."""
    g = generator
    mel = lambda *s: torch.rand(*s, generator=g) * 8 - 4  # noqa: E731
    img = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    l1_to = lambda target: (lambda out: (out - target).abs().mean())  # noqa: E731
    bce_real = lambda out: nn.functional.binary_cross_entropy(out, torch.ones_like(out))  # noqa: E731

    def sync_loss(out):
        audio, face = out
        cosine = (audio * face).sum(1).clamp(1e-7, 1 - 1e-7)
        return nn.functional.binary_cross_entropy(cosine, torch.ones_like(cosine))

    # Batches of the spec scaled down (Base 28 -> 2 windows of T=5, SyncNet 64 -> 8).
    return {
        "HyperLipsBase_128": ("HyperLipsBase", 1, (mel(2, 5, 1, 80, 16), img(2, 6, 5, 128, 128)),
                              l1_to(img(2, 3, 5, 128, 128)), (mel(frames, 1, 80, 16), img(frames, 6, 128, 128)), 10),
        "SyncNet": ("SyncNet", 1, (mel(8, 1, 80, 16), img(8, 15, 64, 128)), sync_loss,
                    (mel(frames, 1, 80, 16), img(frames, 15, 64, 128)), 8),
        "BaseDiscriminator_128": ("BaseDiscriminator", 1, (img(2, 3, 5, 128, 128),), bce_real,
                                  (img(2, 3, 5, 128, 128),), 10),
        "HRDecoder_512": ("HRDecoder", 4, (img(2, 6, 128, 128),), l1_to(img(2, 3, 512, 512)),
                          (img(4, 6, 128, 128),), 2),
        "HRDiscriminator_512": ("HRDiscriminator", 1, (img(2, 3, 512, 512),), bce_real, (img(4, 3, 512, 512),), 2),
    }


def inference_gflop(network, inputs):
    """GFLOP of one eval-mode forward (torch.utils.flop_counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    network.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(*inputs)
    return counter.get_total_flops() / 1e9


def network_runners(official, recipe, spec, which):
    """{"train_step": fn, "inference": fn} per implementation in `which`, the frame counts, and
    the GFLOP of one inference call per implementation (ours skips some of the official work)."""
    name, rescaling, train_in, loss_fn, infer_in, train_frames = spec
    theirs = official_network(official, name, rescaling, recipe)
    nets = {"official": theirs}
    if "ours" in which:
        nets["ours"] = ours_from(theirs, name)
    runners = {}
    for key in which:
        network = nets[key]
        # Each side's optimizer as its training code builds it: the official scripts' Adam, our
        # trainers' (torch's fused Adam, the same update).
        make = adam if key == "ours" else torch.optim.Adam
        optimizer = make(network.parameters(), lr=1e-4, betas=(0.5, 0.999))

        def train_step(network=network, optimizer=optimizer):
            network.train()
            loss = loss_fn(network(*train_in))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def infer(network=network, key=key):
            network.eval()
            # the official inference script runs under no_grad; ours uses inference_mode
            with torch.no_grad() if key == "official" else torch.inference_mode():
                network(*infer_in)

        runners[key] = {"train_step": train_step, "inference": infer}
    n_infer = infer_in[0].shape[0] * (infer_in[0].shape[2] if name == "BaseDiscriminator" else 1)
    gflop = {key: inference_gflop(nets[key], infer_in) for key in which}
    return runners, {"train_step": train_frames, "inference": n_infer}, gflop


# ---- the whole Base training step: the official script's step vs our trainer ------------------
def base_step_batch(batch_size=2, size=128):
    g = torch.Generator().manual_seed(13)
    gt = torch.rand(batch_size, 3, 5, size, size, generator=g)
    masked = gt.clone()
    masked[:, :, :, size // 2:] = 0
    return {"face": torch.cat([masked, torch.rand(gt.shape, generator=g)], dim=1), "gt": gt,
            "indiv_mels": torch.rand(batch_size, 5, 1, 80, 16, generator=g) * 8 - 4,
            "mel": torch.rand(batch_size, 1, 80, 16, generator=g) * 8 - 4}


def official_base_step(generator, discriminator, expert, g_opt, d_opt, batch):
    """Train_hyperlipsBase.py's step (0.03 sync + 0.2 GAN + 0.77 L1, then the D step), with the
    discriminator's perceptual_forward written without its hard-coded .cuda()."""
    bce = nn.functional.binary_cross_entropy
    g_opt.zero_grad()
    d_opt.zero_grad()
    g = generator(batch["indiv_mels"], batch["face"])
    lower = g[:, :, :, g.size(3) // 2:]
    lower = torch.cat([lower[:, :, i] for i in range(5)], dim=1)
    lower = nn.functional.interpolate(lower, (64, 128), mode="bilinear", align_corners=False)
    audio, face = expert(batch["mel"], lower)
    cosine = nn.functional.cosine_similarity(audio, face).unsqueeze(1)
    sync_loss = bce(cosine, torch.ones_like(cosine))
    prediction = discriminator(g)
    perceptual_loss = bce(prediction, torch.ones_like(prediction))
    loss = 0.03 * sync_loss + 0.2 * perceptual_loss + 0.77 * nn.functional.l1_loss(g, batch["gt"])
    loss.backward()
    g_opt.step()
    d_opt.zero_grad()
    prediction = discriminator(batch["gt"])
    bce(prediction, torch.ones_like(prediction)).backward()
    prediction = discriminator(g.detach())
    bce(prediction, torch.zeros_like(prediction)).backward()
    d_opt.step()


def step_runners(which, record_gradients, generator, discriminator, official_step, make_trainer, batch):
    """One full training step per implementation in `which`, from the same official weights.

    Official: `official_step(generator, discriminator, g_opt, d_opt, batch)` with the scripts'
    Adam (G 1e-4, D 5e-4, betas 0.5/0.999). Ours: `make_trainer()`'s train_step, its networks
    loaded from the official weights. `record_gradients`: GradientRecorders instead of the
    optimizers (for the equality check). Returns (runners, networks, optimizers per implementation).
    """
    runners, networks, optimizers = {}, {}, {}
    if "official" in which:
        make = (lambda params, lr: GradientRecorder(params)) if record_gradients else \
            (lambda params, lr: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999)))
        g_opt, d_opt = make(generator.parameters(), 1e-4), make(discriminator.parameters(), 5e-4)

        def run_official():
            generator.train(), discriminator.train()
            official_step(generator, discriminator, g_opt, d_opt, batch)

        runners["official"] = run_official
        networks["official"] = (generator, discriminator)
        optimizers["official"] = (g_opt, d_opt)
    if "ours" in which:
        trainer = make_trainer()
        trainer.networks["generator"].load_state_dict(generator.state_dict())
        trainer.networks["discriminator"].load_state_dict(discriminator.state_dict())
        if record_gradients:
            trainer.optimizers = {name: GradientRecorder(trainer.networks[name].parameters())
                                  for name in ("generator", "discriminator")}
        trainer._set_mode(True)
        runners["ours"] = lambda: trainer.train_step(batch)
        networks["ours"] = (trainer.networks["generator"], trainer.networks["discriminator"])
        optimizers["ours"] = (trainer.optimizers["generator"], trainer.optimizers["discriminator"])
    return runners, networks, optimizers


def base_step_runners(official, recipe, which, workdir, record_gradients=False):
    """step_runners for the Base step: the official script's step vs HyperLipsBaseTrainer, whose
    expert is loaded from an official-format checkpoint."""
    from talkingface.config import Config
    from talkingface.trainer.hyperlipsbase_trainer import HyperLipsBaseTrainer

    generator = official_network(official, "HyperLipsBase", 1, recipe)
    discriminator = official_network(official, "BaseDiscriminator", 1, recipe)
    expert = official_network(official, "SyncNet", 1, recipe).eval()
    for parameter in expert.parameters():
        parameter.requires_grad_(False)

    def make_trainer():
        expert_path = os.path.join(workdir, "expert_official_format.pth")
        torch.save({"state_dict": {"module." + k: v for k, v in expert.state_dict().items()}}, expert_path)
        return HyperLipsBaseTrainer(Config(model="HyperLipsBase", dataset="demo", config_dict=dict(
            checkpoint_root=os.path.join(workdir, "checkpoints"), results_root=os.path.join(workdir, "results"),
            device="cpu", batch_size=2, sync_expert_path=expert_path, syncnet_hflip=False,
            sync_weight=0.03, gan_weight=0.2, l1_weight=0.77)))

    def official_step(g, d, g_opt, d_opt, batch):
        official_base_step(g, d, expert, g_opt, d_opt, batch)

    return step_runners(which, record_gradients, generator, discriminator, official_step, make_trainer,
                        base_step_batch())


def _flat_gradients(network, recorder):
    """A recorder's gradients as one vector in parameter-name order (the two implementations
    register their modules in different orders)."""
    gradients = dict(zip([n for n, _ in network.named_parameters()], recorder.gradients))
    return torch.cat([gradients[n].flatten() for n in sorted(gradients)])


def compare_step(make_runners, official, recipe, workdir):
    """One training step of both from the same weights and batch: per network, the norm of the
    gradient difference relative to the official gradient's norm, and the largest difference of
    the BatchNorm running statistics the step's forward left behind. Next to it, the official
    step against itself run with one more thread (another float summation order): at random
    init, BatchNorm in training mode makes these gradients sensitive to that order."""
    runners, networks, optimizers = make_runners(official, recipe, ("official", "ours"), workdir,
                                                 record_gradients=True)
    for run in runners.values():
        run()
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        again, _, again_optimizers = make_runners(official, recipe, ("official",), workdir,
                                                  record_gradients=True)
        again["official"]()
    finally:
        torch.set_num_threads(threads)
    report = {}
    for index, name in enumerate(("generator", "discriminator")):
        theirs = _flat_gradients(networks["official"][index], optimizers["official"][index])
        ours = _flat_gradients(networks["ours"][index], optimizers["ours"][index])
        theirs_again = _flat_gradients(networks["official"][index], again_optimizers["official"][index])
        report[f"{name}_gradients_relative"] = relative_difference(ours, theirs)
        report[f"{name}_official_vs_itself_relative"] = relative_difference(theirs_again, theirs)
        theirs_state, ours_state = networks["official"][index].state_dict(), networks["ours"][index].state_dict()
        parameters = dict(networks["official"][index].named_parameters())
        buffers = [k for k in theirs_state if k not in parameters and theirs_state[k].is_floating_point()]
        report[f"{name}_running_statistics_max_abs_diff"] = max(
            [float((theirs_state[k] - ours_state[k]).abs().max()) for k in buffers], default=0.0)
    return report


# ---- the whole HR training step: the official script's step vs our trainer ---------------------
HR_STEP_SIZE = 256


def hr_step_batch(batch_size=2, size=HR_STEP_SIZE):
    from talkingface.model.losses import box_masks
    g = torch.Generator().manual_seed(17)
    boxes = torch.tensor([[size // 4, size // 2, 3 * size // 4, 7 * size // 8]] * batch_size)
    return {"input": torch.rand(batch_size, 6, 128, 128, generator=g),
            "gt": torch.rand(batch_size, 3, size, size, generator=g),
            "mask": box_masks(boxes, size, torch.float32), "lip_box": boxes}


def official_hr_step(generator, discriminator, g_opt, d_opt, batch):
    """Train_hyperlipsHR.py's step without its two feature losses (VGG perceptual, lip LPIPS:
    they need downloaded ImageNet weights, and our trainer switches them off without them):
    relativistic GAN + L1 + per-sample lip-box L1, then the discriminator step."""
    bce_logits, l1 = nn.BCEWithLogitsLoss(), nn.L1Loss()
    gt = batch["gt"]
    real_labels, fake_labels = torch.ones(len(gt), 1), torch.zeros(len(gt), 1)
    g_opt.zero_grad()
    g = generator(batch["input"])
    lip = 0
    for i, (x1, y1, x2, y2) in enumerate(batch["lip_box"].tolist()):
        lip = lip + l1(g[i, :, y1:y2, x1:x2], gt[i, :, y1:y2, x1:x2])
    lip = lip / len(gt)
    score_real, score_fake = discriminator(gt), discriminator(g)
    adversarial = (bce_logits(score_fake - score_real.mean(), real_labels)
                   + bce_logits(score_real - score_fake.mean(), fake_labels)) / 2
    (adversarial + l1(g, gt) + lip).backward()
    g_opt.step()
    d_opt.zero_grad()
    score_real, score_fake = discriminator(gt), discriminator(g.detach())
    ((bce_logits(score_real - score_fake.mean(), real_labels)
      + bce_logits(score_fake - score_real.mean(), fake_labels)) / 2).backward()
    d_opt.step()


def hr_step_runners(official, recipe, which, workdir, record_gradients=False):
    """step_runners for the HR step: the official script's step vs HyperLipsHRTrainer, with the
    same loss terms (the feature losses off on both)."""
    from talkingface.config import Config
    from talkingface.trainer.hyperlipshr_trainer import HyperLipsHRTrainer

    def make_trainer():
        missing = os.path.join(workdir, "absent.pth")
        return HyperLipsHRTrainer(Config(model="HyperLipsHR", dataset="demo", config_dict=dict(
            checkpoint_root=os.path.join(workdir, "checkpoints"), results_root=os.path.join(workdir, "results"),
            device="cpu", batch_size=2, img_size=HR_STEP_SIZE, gan_weight=1.0, l1_weight=1.0, lip_l1_weight=1.0,
            vgg19_path=missing, lpips_path=missing, lpips_vgg16_path=missing)))

    generator = official_network(official, "HRDecoder", HR_STEP_SIZE // 128, recipe)
    discriminator = official_network(official, "HRDiscriminator", 1, recipe)
    return step_runners(which, record_gradients, generator, discriminator, official_hr_step, make_trainer,
                        hr_step_batch())


def all_runners(official, recipe, which, frames, only, workdir):
    """case -> (runners {impl: {kind: fn}}, frames {kind: n}, {impl: GFLOP per inference call} or None)."""
    cases = {}
    for case, spec in timing_cases(frames, torch.Generator().manual_seed(11)).items():
        if not only or case in only:
            cases[case] = network_runners(official, recipe, spec, which)
    whole_steps = (("HyperLipsBase_full_training_step", base_step_runners, 10),
                   ("HyperLipsHR_full_training_step", hr_step_runners, 2))
    for case, make_runners, frames_per_step in whole_steps:
        if not only or case in only:
            runners = make_runners(official, recipe, which, workdir)[0]
            cases[case] = ({k: {"train_step": fn} for k, fn in runners.items()}, {"train_step": frames_per_step}, None)
    return cases


def measure(official, recipe, which, repeats, frames, only):
    """Min CPU and wall seconds per call: case -> kind -> impl -> {"cpu", "wall"}.

    Implementations in `which` are interleaved, so that load changes hit them alike."""
    with tempfile.TemporaryDirectory() as workdir:
        cases = all_runners(official, recipe, which, frames, only, workdir)
        seconds = {}
        for case, (runners, counts, gflop) in cases.items():
            results = {}
            for key in which:  # warm-up (allocator, oneDNN primitive caches, optimizer state)
                for fn in runners[key].values():
                    fn()
            for _ in range(repeats):
                for key in which:
                    for kind, fn in runners[key].items():
                        timed(fn, results, f"{kind}/{key}")
            seconds[case] = {kind: {"frames": n, **{key: {clock: min(results[f"{kind}/{key}"][clock])
                                                            for clock in ("cpu", "wall")} for key in which}}
                             for kind, n in counts.items()}
            if gflop is not None:
                seconds[case]["inference"]["gflop"] = gflop
    return seconds


def ratios(seconds):
    """frames/s of both implementations and ours/official speed ratios, per case and kind."""
    report = {}
    for case, kinds in seconds.items():
        report[case] = {}
        for kind, row in kinds.items():
            n = row["frames"]
            entry = {"frames": n}
            for key in ("official", "ours"):
                entry[f"{key}_frames_per_cpu_s"] = round(n / row[key]["cpu"], 3)
                entry[f"{key}_frames_per_wall_s"] = round(n / row[key]["wall"], 3)
            entry["speed_ratio_cpu"] = round(row["official"]["cpu"] / row["ours"]["cpu"], 3)
            entry["speed_ratio_wall"] = round(row["official"]["wall"] / row["ours"]["wall"], 3)
            if "gflop" in row:  # how close each runs to the machine's arithmetic peak
                for key in ("official", "ours"):
                    entry[f"{key}_gflop_per_frame"] = round(row["gflop"][key] / n, 3)
                    entry[f"{key}_gflop_per_cpu_s"] = round(row["gflop"][key] / row[key]["cpu"], 1)
            report[case][kind] = entry
    return report


def measure_in_child(args, which):
    """`measure` for one implementation in a fresh process: the official code with glibc's default
    malloc, ours with keep_freed_memory (the parent's mallopt does not survive the exec)."""
    extra = ["--only", args.only] if args.only else []
    return harness.run_child(__file__, "--official", args.official, "--_child", which, "--repeats", args.repeats,
                             "--frames", args.frames, "--threads", args.threads, *extra)

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="path to a checkout of the official HyperLips code")
    parser.add_argument("--write-fixture", help="write the test fixture (.npz) to this path")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16, help="frames per inference call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated timing cases (default: all)")
    parser.add_argument("--allocator", choices=("default", "tuned"), default="tuned",
                        help="malloc setting of the same-process timing, shared by both implementations")
    parser.add_argument("--no-as-run", action="store_true", help="skip the timing of each implementation in its own process")
    parser.add_argument("--_child", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if not os.path.isdir(os.path.join(args.official, "models")):
        print(f"skipped: no official HyperLips checkout at {args.official} (expected a 'models' folder)")
        return
    torch.set_num_threads(args.threads)
    only = set(args.only.split(",")) if args.only else None
    if args._child:
        if args._child == "ours":
            keep_freed_memory()   # as run_talkingface.py does
        seconds = measure(load_official(os.path.abspath(args.official)), load_recipe(), (args._child,),
                          args.repeats, args.frames, only)
        harness.print_child_result(seconds)
        return
    if args.allocator == "tuned":
        keep_freed_memory()
    recipe = load_recipe()
    official = load_official(os.path.abspath(args.official))
    report = harness.header("cpu", args.threads)
    if args.write_fixture:
        report["fixture"] = write_fixture(official, recipe, args.write_fixture)
    report["max_abs_diff"], report["gradient_diff"] = compare_outputs(official, recipe)
    with tempfile.TemporaryDirectory() as workdir:
        report["gradient_diff"]["base_full_training_step"] = compare_step(base_step_runners, official, recipe, workdir)
        report["gradient_diff"]["hr_full_training_step"] = compare_step(hr_step_runners, official, recipe, workdir)
    report["max_abs_diff_ok"] = max(report["max_abs_diff"].values()) <= 1e-4
    if not args.skip_timing:
        report["timing_same_process"] = {
            "allocator": "tuned (both)" if args.allocator == "tuned" else "glibc default (both)",
            **ratios(measure(official, recipe, ("official", "ours"), args.repeats, args.frames, only))}
        if not args.no_as_run:
            seconds = {key: measure_in_child(args, key) for key in ("official", "ours")}
            merged = {}
            for case, kinds in seconds["official"].items():
                merged[case] = {}
                for kind, row in kinds.items():
                    ours = seconds["ours"][case][kind]
                    merged[case][kind] = {**row, "ours": ours["ours"]}
                    if "gflop" in row:
                        merged[case][kind]["gflop"] = {**row["gflop"], **ours["gflop"]}
            report["timing_as_run"] = {"allocator": "official: glibc default; ours: tuned, as run_talkingface.py",
                                       **ratios(merged)}
    harness.print_report(report)


if __name__ == "__main__":
    main()
