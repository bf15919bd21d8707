"""Compare our HyperLips networks with the official code: same weights -> same outputs; speed.

    .venv/bin/python benchmarks/official_compare.py --official /path/to/hyperlips_official

For every network (Base 4-D and 5-D in eval and train mode, SyncNet, both discriminators,
HRDecoder 128/256/512) it builds the official and our network, fills the official one with the
deterministic weights of tests/test_networks_equivalence.py, loads the official state dict into
ours through `talkingface.model.load_network` (official checkpoint format, with "module."
prefixes), and reports the max abs difference of the outputs (and, for Base, of the parameter
gradients of an L1 loss). Then it times, on the CPU, a training step (forward + backward + Adam
step) and no-grad inference for both implementations, interleaved, and prints one JSON object.

Timing: the process CPU time of each call (time.process_time, min over --repeats) is the main
figure, because wall time on a shared machine mostly measures the other processes; wall times are
reported too. --threads sets torch's intra-op threads (default 1, the most stable). Timed cases:
HyperLipsBase at 128 (train B=2,T=5; inference --frames frames), SyncNet (train 8), the Base
discriminator (2x5 frames), HRDecoder x4 (128 -> 512) and the HR discriminator at 512.

Regenerate the committed test fixture (official outputs for the recipe's weights and inputs):

    .venv/bin/python benchmarks/official_compare.py --official /path/to/hyperlips_official \
        --write-fixture tests/data/networks_official_reference.npz --skip-timing

The official code imports torchvision (whose import fails beside the CPU torch build here); it only
needs `transforms.functional.normalize` and the names `models.resnet.{ResNet,Bottleneck}`, so a
tiny in-memory stand-in is put in sys.modules before importing it (no file is written for it).
"""
import argparse
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from talkingface.model import load_network  # noqa: E402


def load_recipe():
    """The deterministic weight/input recipe lives with the test that uses it."""
    path = os.path.join(ROOT, "tests", "test_networks_equivalence.py")
    spec = importlib.util.spec_from_file_location("networks_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
def timed(fn, repeats, results, key):
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


def benchmark(official, recipe, repeats, frames, only=None):
    report = {}
    for case, (name, rescaling, train_in, loss_fn, infer_in, train_frames) in timing_cases(
            frames, torch.Generator().manual_seed(11)).items():
        if only and case not in only:
            continue
        theirs = official_network(official, name, rescaling, recipe)
        nets = {"official": theirs, "ours": ours_from(theirs, name)}
        optimizers = {k: torch.optim.Adam(n.parameters(), lr=1e-4, betas=(0.5, 0.999)) for k, n in nets.items()}

        def train_step(key):
            network, optimizer = nets[key], optimizers[key]
            network.train()
            loss = loss_fn(network(*train_in))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def infer(key):
            network = nets[key].eval()
            # the official inference script runs under no_grad; ours uses inference_mode
            with torch.no_grad() if key == "official" else torch.inference_mode():
                network(*infer_in)

        results = {}
        for key in nets:  # warm-up (allocator, oneDNN primitive caches)
            train_step(key)
            infer(key)
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            for key in nets:
                timed(lambda: train_step(key), repeats, results, f"train_step/{key}")
                timed(lambda: infer(key), repeats, results, f"inference/{key}")
        n_infer = len(infer_in[0]) if name != "BaseDiscriminator" else infer_in[0].shape[0] * infer_in[0].shape[2]
        entry = {}
        for kind, n_frames in (("train_step", train_frames), ("inference", n_infer)):
            row = {"frames": n_frames}
            for key in nets:
                row[f"{key}_frames_per_cpu_s"] = round(n_frames / min(results[f"{kind}/{key}"]["cpu"]), 3)
                row[f"{key}_frames_per_wall_s"] = round(n_frames / min(results[f"{kind}/{key}"]["wall"]), 3)
            row["speed_ratio_cpu"] = round(row["ours_frames_per_cpu_s"] / row["official_frames_per_cpu_s"], 3)
            row["speed_ratio_wall"] = round(row["ours_frames_per_wall_s"] / row["official_frames_per_wall_s"], 3)
            entry[kind] = row
        report[case] = entry
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="path to a checkout of the official HyperLips code")
    parser.add_argument("--write-fixture", help="write the test fixture (.npz) to this path")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=16, help="frames per inference call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated timing cases (default: all)")
    args = parser.parse_args()

    if not os.path.isdir(os.path.join(args.official, "models")):
        print(f"skipped: no official HyperLips checkout at {args.official} (expected a 'models' folder)")
        return
    torch.set_num_threads(args.threads)
    recipe = load_recipe()
    official = load_official(os.path.abspath(args.official))
    report = {"torch": torch.__version__, "threads": args.threads}
    if args.write_fixture:
        report["fixture"] = write_fixture(official, recipe, args.write_fixture)
    report["max_abs_diff"], report["gradient_diff"] = compare_outputs(official, recipe)
    report["max_abs_diff_ok"] = max(report["max_abs_diff"].values()) <= 1e-4
    if not args.skip_timing:
        only = set(args.only.split(",")) if args.only else None
        report["timing_cpu"] = benchmark(official, recipe, args.repeats, args.frames, only)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
