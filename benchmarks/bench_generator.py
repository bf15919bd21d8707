"""HyperLipsBase `generate` on the CPU: time per stage in fp32, and what bf16 and int8 change.

    python benchmarks/bench_generator.py [--checkpoint PATH] [--audio A] [--batch 8] [--repeats 5]
                                         [--calibration 2] [--engine x86] [--threads N]

Inputs: infer_int8's calibration inputs, 128 px face crops of the demo photograph whose mouth
opens with the audio (the recipe of harness.synthetic_talking_video, rendered at crop size), masked and paired with the first crop
as reference (reference_frame=first), and the frames' mel chunks of a synthetic speech track
(or --audio). Weights: random init (seed 0), or --checkpoint loaded as inference loads it. The
network runs in eval mode and channels-last, as talkingface/inference/render.py runs it.

The first --calibration batches calibrate int8; the next, held-out batch is timed and compared.
Per stage (forward hooks): wall ms per frame (`ms_per_frame`) and process CPU ms per frame
(`cpu_ms_per_frame`, all threads): the fastest of --repeats calls after a warm-up call, the
variants taking turns call by call (a busy spell of a shared machine then hits them alike).
`full_res` = decoder.decode0 + up_conv + output_block: the 128x128 part (five 3x3 convolutions).
Variants, each against the fp32 crops (uint8, as to_uint8_images makes them): PSNR over the
batch and of its worst crop (dB; 100 = identical), and the speed-up of the whole `generate`
(wall time). PSNR depends on the weights: with random init the crops vary little
(fp32.output_std_levels), so measure a trained checkpoint before trusting a margin.
  bf16: torch.autocast(bfloat16) around generate, features cast to bf16 (as infer_bf16 runs it);
  int8: infer_int8's post-training static quantization (talkingface/inference/int8.py: FX graph
        mode, min-max calibrated 7-bit activations, per-channel int8 weights) of full_res as ONE
        graph, so that its activations stay int8 between the convolutions.
Prints one JSON object. Figures and the verdict: docs/benchmarks.md.
"""
import argparse
import contextlib
import os
import time

import harness

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run_talkingface.py: idle OpenMP threads must not spin

import numpy as np  # noqa: E402
import torch  # noqa: E402

PSNR_RULE_DB = 40.0
STAGES = ("hyper_control_net", "decoder", "decoder.decode0", "up_conv", "output_block")


def make_batches(model, args):
    """[(audio, face, features)] of consecutive frames, args.calibration + 1 batches: infer_int8's
    calibration inputs (talkingface/inference/int8.py), driven by --audio when given."""
    from talkingface.inference.int8 import calibration_batches
    from talkingface.utils.audio import load_audio

    wav = load_audio(args.audio) if args.audio else None
    return calibration_batches(model, args.calibration + 1, args.batch, wav)


def generate_timed(model, batch, bf16):
    """(output, {stage: [wall s, CPU s]}) of one model.generate call on `batch`, stages by forward hooks."""
    def now():
        return np.array([time.perf_counter(), harness.cpu_seconds()])

    clocks, hooks = {}, []
    for name in STAGES:
        module = model.get_submodule(name)
        hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: clocks.__setitem__(n, now())))
        hooks.append(module.register_forward_hook(lambda m, a, o, n=name: clocks.__setitem__(n, now() - clocks[n])))
    audio, face, features = batch
    if bf16:  # as render.py feeds the stored features under infer_bf16
        features = [f.to(torch.bfloat16) for f in features]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        start = now()
        out = model.generate(audio, face, features)
        clocks["generate"] = now() - start
    for hook in hooks:
        hook.remove()
    clocks["full_res"] = clocks["decoder.decode0"] + clocks["up_conv"] + clocks["output_block"]
    return out, clocks


def measure(variants, batch, repeats):
    """{name: (uint8 crops, wall ms per frame, CPU ms per frame)} for (name, model, bf16) variants.
    They take turns call by call, so that a busy spell of the shared machine hits them alike; each
    stage counts its fastest of `repeats` calls after a warm-up call."""
    from talkingface.model.inputs import to_uint8_images

    outputs, runs = {}, {name: [] for name, _, _ in variants}
    for _ in range(repeats + 1):
        for name, model, bf16 in variants:
            outputs[name], clocks = generate_timed(model, batch, bf16)
            runs[name].append(clocks)
    results = {}
    for name, (_, *timed) in runs.items():  # the first call was the warm-up
        ms = {stage: np.min([t[stage] for t in timed], axis=0) * 1000 / len(batch[0]) for stage in timed[0]}
        results[name] = (to_uint8_images(outputs[name]),
                         *({stage: round(float(v[i]), 2) for stage, v in ms.items()} for i in (0, 1)))
    return results


def psnr(crops, reference):
    """(PSNR over all crops, PSNR of the worst crop) in dB on 0..255; 100 = identical."""
    err = (crops.astype(np.float64) - reference.astype(np.float64)) ** 2
    mse = [err.mean(), err.reshape(len(err), -1).mean(1).max()]
    return [round(float(10 * np.log10(255.0 ** 2 / max(m, 255.0 ** 2 * 1e-10))), 2) for m in mse]


def int8_model(model, calibration, engine):
    """infer_int8's quantized copy of `model` (talkingface/inference/int8.py), calibrated on
    `calibration`, and a description of what runs in int8."""
    from talkingface.inference.int8 import quantize_full_resolution

    quantized = quantize_full_resolution(model, calibration, engine)
    part = quantized.decoder.decode0
    ops = [str(type(part.get_submodule(n.target)) if n.op == "call_module" else n.target)
           for n in part.graph.nodes if n.op in ("call_module", "call_function")]
    convs = [op for op in ops if "conv" in op.lower()]
    int8 = [op for op in convs if "quantized" in op]
    scope = (f"int8: decoder.decode0 + up_conv + output_block ({len(int8)} of {len(convs)} convolutions, "
             f"{engine} engine, per-channel weights); fp32: hyper_control_net (its kernels are predicted per "
             "sample from the audio, no fixed weights to quantize) and decoder.decode4-decode1 (up to 64x64)")
    return quantized, scope


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="HyperLipsBase weights (default: random init, seed 0)")
    parser.add_argument("--audio", help="driving audio (default: synthetic speech)")
    parser.add_argument("--batch", type=int, default=8, help="frames per generate call (inference's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (the fastest counts)")
    parser.add_argument("--engine", default="x86", choices=["x86", "fbgemm", "onednn"],
                        help="quantized engine of int8 (x86 picks fbgemm or oneDNN kernels per op)")
    parser.add_argument("--calibration", type=int, default=2, help="batches that calibrate int8 (infer_int8 uses 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    from talkingface.inference.networks import load_checked
    from talkingface.model import build_network
    from talkingface.utils.runtime import keep_freed_memory

    keep_freed_memory()  # as run_talkingface.py does
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark setting; the library never sets it
    report = dict(harness.header("cpu", args.threads), batch=args.batch, repeats=args.repeats,
                  calibration_batches=args.calibration, weights=args.checkpoint or "random init (seed 0)")
    torch.manual_seed(0)
    model = load_checked("HyperLipsBase", args.checkpoint) if args.checkpoint else build_network("HyperLipsBase")
    model = model.eval().to(memory_format=torch.channels_last)
    batches = make_batches(model, args)
    quantized, scope = int8_model(model, batches[:-1], args.engine)
    results = measure([("fp32", model, False), ("int8", quantized, False), ("bf16", model, True)],
                      batches[-1], args.repeats)
    reference, ms, cpu_ms = results.pop("fp32")
    # a random-init network's crops hardly vary (std ~6 levels), which flatters every PSNR below
    report["fp32"] = {"ms_per_frame": ms, "cpu_ms_per_frame": cpu_ms,
                      "output_std_levels": round(float(reference.std()), 1)}
    for name, (crops, ms, cpu_ms) in results.items():
        keep = ("full_res", "generate") if name == "int8" else list(ms)  # the stages it changes
        report[name] = {"ms_per_frame": {k: ms[k] for k in keep}, "cpu_ms_per_frame": {k: cpu_ms[k] for k in keep},
                        "generate_speedup": round(report["fp32"]["ms_per_frame"]["generate"] / ms["generate"], 2)}
        report[name]["psnr_db"], report[name]["psnr_db_worst_crop"] = psnr(crops, reference)
        report[name]["keeps_40db"] = report[name]["psnr_db_worst_crop"] >= PSNR_RULE_DB
    report["int8"]["int8_scope"] = scope
    report["peak_rss_mb"] = harness.peak_rss_mb()
    harness.print_report(report)


if __name__ == "__main__":
    main()
