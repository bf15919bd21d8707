"""The inference networks on the CPU per backend: torch fp32, torch bf16 (infer_bf16), onnxruntime
and openvino (infer_backend), at batch 1 and --batch; the figures that chose infer_backend's default.

    python benchmarks/bench_engine.py [--checkpoint PATH] [--batch 8] [--repeats 5] [--hr-size 256]
                                      [--cache DIR] [--threads N] [--int8]

Networks: the Base face encoder (encode_face), the Base generator (generate) and the HR decoder
(--hr-size px), random init (seed 0) or --checkpoint for the Base; inputs are random. Each case
is the fastest of --repeats calls after a warm-up call, in ms per frame; backends take turns call
by call, so a busy spell of the shared machine hits them alike. `max_abs_diff` is each engine's
largest difference from torch fp32 on the same inputs (engines run fp32; openvino with
INFERENCE_PRECISION_HINT f32, as inference/engine.py, and `openvino_bf16` with its bf16 hint).
`speedup_vs_torch_bf16` / `_fp32` compare the sum over the three networks.
--int8 adds infer_int8 (talkingface/inference/int8.py: the generator quantized by onnxruntime,
calibrated on 2 batches of its calibration inputs, the demo photograph's face): on the next,
held-out batch of --batch frames, the PSNR of its crops against torch fp32's (over the batch and
of the worst crop, dB on uint8 crops; the rule to keep it is >= 40) and the generator's ms per
frame beside torch fp32, torch bf16 and onnxruntime fp32 (taking turns). Prints one JSON object.
"""
import argparse
import contextlib
import os
import tempfile
import time

import harness

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as run_talkingface.py

import numpy as np  # noqa: E402
import torch  # noqa: E402


def torch_call(network, graph, bf16):
    def call(inputs):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        tensors = [torch.from_numpy(a).contiguous(memory_format=torch.channels_last) if a.ndim == 4
                   else torch.from_numpy(a) for a in inputs.values()]
        with torch.inference_mode(), autocast:
            if graph == "face_encoder":
                out = network.encode_face(*tensors)
            elif graph == "generator":
                audio, face, *features = tensors
                out = [network.generate(audio, face, [f.to(torch.bfloat16) if bf16 else f for f in features])]
            else:
                out = [network(*tensors)]
        return [o.float().numpy() for o in out]
    return call


def psnr(crops, reference):
    """(PSNR over all crops, PSNR of the worst crop) in dB on 0..255 (as bench_generator.psnr)."""
    err = (crops.astype(np.float64) - reference.astype(np.float64)) ** 2
    mse = [err.mean(), err.reshape(len(err), -1).mean(1).max()]
    return [round(float(10 * np.log10(255.0 ** 2 / max(m, 255.0 ** 2 * 1e-10))), 2) for m in mse]


def measure_int8(base, generator_path, folder, args):
    """infer_int8's generator: PSNR against torch fp32 on a held-out batch, and ms per frame."""
    import onnxruntime
    from talkingface.inference.engine import Session
    from talkingface.inference.int8 import calibration_batches, generator_feeds, quantize_generator
    from talkingface.model.inputs import to_uint8_images

    batches = calibration_batches(base, 3, args.batch)
    int8_path = os.path.join(folder, "generator_int8.onnx")
    started = time.perf_counter()
    quantize_generator(generator_path, int8_path, batches[:2])
    seconds = time.perf_counter() - started
    feed = generator_feeds(batches[2:])[0]
    calls = {"torch_fp32": torch_call(base, "generator", False), "torch_bf16": torch_call(base, "generator", True),
             "onnxruntime": Session(onnxruntime, "onnxruntime", generator_path),
             "onnxruntime_int8": Session(onnxruntime, "onnxruntime", int8_path)}
    times, outputs = {name: [] for name in calls}, {}
    for _ in range(args.repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            outputs[name] = to_uint8_images(torch.from_numpy(call(feed)[0]))
            times[name].append(time.perf_counter() - start)
    all_db, worst_db = psnr(outputs["onnxruntime_int8"], outputs["torch_fp32"])
    return {"quantize_seconds": round(seconds, 1), "psnr_db": all_db, "psnr_db_worst_crop": worst_db,
            "keeps_40db": worst_db >= 40.0, "output_std_levels": round(float(outputs["torch_fp32"].std()), 1),
            "generator_ms_per_frame": {name: round(min(t[1:]) * 1000 / args.batch, 2) for name, t in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="HyperLipsBase weights (default: random init, seed 0)")
    parser.add_argument("--batch", type=int, default=8, help="the larger batch (infer_batch_size's default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hr-size", type=int, default=256, choices=[128, 256, 512])
    parser.add_argument("--cache", help="folder for the exported graphs (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--int8", action="store_true", help="also quantize the generator (infer_int8) and measure it")
    args = parser.parse_args()
    from talkingface.inference.engine import Session, engine_module
    from talkingface.model import build_network, load_network
    from talkingface.model.export import GRAPH_INPUTS, export_onnx

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_network("HyperLipsBase", args.checkpoint) if args.checkpoint else build_network("HyperLipsBase")
    base = base.eval().to(memory_format=torch.channels_last)
    hr = build_network("HRDecoder", args.hr_size // 128).eval().to(memory_format=torch.channels_last)
    report = dict(harness.header("cpu", args.threads), weights=args.checkpoint or "random init (seed 0)",
                  hr_size=args.hr_size, repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or tmp
        started = time.perf_counter()
        paths = export_onnx(base, hr, folder)
        report["export_seconds"] = round(time.perf_counter() - started, 1)
        variants = {"torch_fp32": {g: torch_call(base if g != "hr_decoder" else hr, g, False) for g in paths},
                    "torch_bf16": {g: torch_call(base if g != "hr_decoder" else hr, g, True) for g in paths}}
        for backend in ("onnxruntime", "openvino"):
            module = engine_module(backend)
            if module is None:
                continue
            variants[backend] = {g: Session(module, backend, p) for g, p in paths.items()}
            if backend == "openvino":
                bf16 = {g: Session(module, backend, p) for g, p in paths.items()}
                for g, p in paths.items():
                    bf16[g].session = module.Core().compile_model(p, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
                variants["openvino_bf16"] = bf16
        rng = np.random.default_rng(0)
        for batch in sorted({1, args.batch}):
            face = rng.random((batch, 6, 128, 128), dtype=np.float32)
            with torch.inference_mode():
                features = [f.numpy().copy() for f in base.encode_face(torch.from_numpy(face))]
            inputs = {"face_encoder": {"face": face},
                      "generator": dict(zip(GRAPH_INPUTS["generator"],
                                            [rng.standard_normal((batch, 1, 80, 16), dtype=np.float32), face,
                                             *features])),
                      "hr_decoder": {"x": rng.random((batch, 6, 128, 128), dtype=np.float32)}}
            times = {name: {g: [] for g in paths} for name in variants}
            outputs = {name: {} for name in variants}
            for _ in range(args.repeats + 1):
                for graph in paths:
                    for name, calls in variants.items():
                        start = time.perf_counter()
                        outputs[name][graph] = calls[graph](inputs[graph])
                        times[name][graph].append(time.perf_counter() - start)
            case = {}
            for name in variants:
                ms = {g: round(min(t[1:]) * 1000 / batch, 2) for g, t in times[name].items()}
                ms["total"] = round(sum(ms.values()), 2)
                case[name] = {"ms_per_frame": ms}
                if name != "torch_fp32":
                    case[name]["max_abs_diff"] = {g: float(max(np.abs(a - b).max() for a, b in zip(
                        outputs[name][g], outputs["torch_fp32"][g]))) for g in paths}
            for name in variants:
                for ref in ("torch_fp32", "torch_bf16"):
                    case[name][f"speedup_vs_{ref}"] = round(case[ref]["ms_per_frame"]["total"]
                                                            / case[name]["ms_per_frame"]["total"], 2)
            report[f"batch_{batch}"] = case
        if args.int8:
            report["int8"] = measure_int8(base, paths["generator"], folder, args)
    report["peak_rss_mb"] = harness.peak_rss_mb()
    harness.print_report(report)


if __name__ == "__main__":
    main()
