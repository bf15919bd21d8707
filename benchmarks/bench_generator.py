"""HyperLipsBase `generate` on the CPU: time per stage in fp32, and what bf16 changes.

    python benchmarks/bench_generator.py [--checkpoint PATH] [--audio A] [--batch 8] [--repeats 5]
                                         [--calibration 2] [--threads N]
                                         [--hr-rescaling 1] [--region-only]

Inputs: infer_int8's calibration inputs, 128 px face crops of the demo photograph whose mouth
opens with the audio (the recipe of harness.synthetic_talking_video, rendered at crop size), masked and paired with the first crop
as reference (reference_frame=first), and the frames' mel chunks of a synthetic speech track
(or --audio). Weights: random init (seed 0), or --checkpoint loaded as inference loads it. The
network runs in eval mode and channels-last, as talkingface/inference/render.py runs it.

The batch after the first --calibration batches (infer_int8 calibrates on those) is timed and compared.
Per stage (forward hooks): wall ms per frame (`ms_per_frame`) and process CPU ms per frame
(`cpu_ms_per_frame`, all threads): the fastest of --repeats calls after a warm-up call, the
variants taking turns call by call (a busy spell of a shared machine then hits them alike).
`full_res` = decoder.decode0 + up_conv + output_block: the 128x128 part (five 3x3 convolutions).
Variants, each against the fp32 crops (uint8, as to_uint8_images makes them): PSNR over the
batch and of its worst crop (dB; 100 = identical), and the speed-up of the whole `generate`
(wall time). PSNR depends on the weights: with random init the crops vary little
(fp32.output_std_levels), so measure a trained checkpoint before trusting a margin.
  bf16: torch.autocast(bfloat16) around generate, features cast to bf16 (as infer_bf16 runs it);
infer_int8 now runs through onnxruntime: benchmarks/bench_engine.py --int8 measures it.
`pasted_region`: fp32 wall and CPU ms per frame of the full `generate` against
`generate(..., region=rect)`, which computes only the rectangle inference pastes (the 128x128
layers on it plus their 5 px margin), at batch 1 and --batch, on the timed batch; `rect` is the
demo face's paste rectangle (demo_paste_rect). Likewise the HR decoder (HRDecoder at
--hr-rescaling, random init, random input) full against forward_region over the rectangle scaled
to its output. `max_abs_diff`: region against the same rectangle of the full output;
`cpu_speedup`: the CPU-time ratio, steadier than wall time on a busy machine;
`new_rect_first_call_cpu_ms_per_frame`: the first call with a rectangle 1 px larger (a new shape).
--region-only skips bf16 (a short run).
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
PASTE_THRESHOLD = 1e-3   # paste_face pastes the mask's pixels above this
DEMO_FACE_PX = 360       # the face box of harness.synthetic_talking_video
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


def demo_paste_rect(face):
    """The rectangle of the 128 px crops that inference pastes for the demo face: render.py's paste
    mask (paste.mouth_mask over the face mesh of the crop, feather 0.06) of the batch's reference
    crop (the first frame; the others sway by 2 px at most), through region.pasted_source_rect
    for paste_face's threshold and the demo's DEMO_FACE_PX face box."""
    from talkingface.inference.paste import mouth_mask
    from talkingface.model.audio_driven_talkingface.region import pasted_source_rect
    from talkingface.model.inputs import to_uint8_images
    from talkingface.utils.face import FaceMesh

    crop = np.ascontiguousarray(to_uint8_images(face[:1, 3:6])[0])
    size = crop.shape[0]
    mesh = FaceMesh(static_image_mode=True)
    try:
        landmarks = mesh.landmarks(crop)
    finally:
        mesh.close()
    mask = mouth_mask(landmarks, size, size, 0.06)
    return pasted_source_rect(mask[None], [DEMO_FACE_PX], PASTE_THRESHOLD, size), landmarks is not None


def time_pair(calls, frames, repeats):
    """{name: {ms_per_frame, cpu_ms_per_frame}} and the outputs of (name, call) pairs taking turns
    call by call; each counts its fastest of `repeats` calls after a warm-up call (repeats=0: the
    first call itself)."""
    runs, outputs = {name: [] for name, _ in calls}, {}
    for _ in range(repeats + 1):
        for name, call in calls:
            start = np.array([time.perf_counter(), harness.cpu_seconds()])
            with torch.inference_mode():
                outputs[name] = call()
            runs[name].append(np.array([time.perf_counter(), harness.cpu_seconds()]) - start)
    timing = {name: dict(zip(("ms_per_frame", "cpu_ms_per_frame"),
                             (round(float(v), 2) for v in np.min(t[1:] or t, axis=0) * 1000 / frames)))
              for name, t in runs.items()}
    return timing, outputs


def full_vs_region(full, region, rect, frames, repeats):
    """Timing of a full and a region call, the speed-up and the region's max abs difference."""
    timing, out = time_pair([("full", full), ("region", region)], frames, repeats)
    top, bottom, left, right = rect
    timing["speedup"] = round(timing["full"]["ms_per_frame"] / timing["region"]["ms_per_frame"], 2)
    timing["cpu_speedup"] = round(timing["full"]["cpu_ms_per_frame"] / timing["region"]["cpu_ms_per_frame"], 2)
    timing["max_abs_diff"] = float((out["region"] - out["full"][:, :, top:bottom, left:right]).abs().max())
    return timing


def pasted_region(model, batch, repeats, hr_rescaling):
    """The `pasted_region` report: generate and the HR decoder, full against region-only."""
    from talkingface.model.audio_driven_talkingface.hyperlipshr import HRDecoder

    audio, face, features = batch
    rect, mesh_found = demo_paste_rect(face)
    size = face.shape[-1]
    report = {"rect": list(rect), "rect_px": [rect.bottom - rect.top, rect.right - rect.left],
              "rect_area_fraction": round((rect.bottom - rect.top) * (rect.right - rect.left) / size ** 2, 3),
              "mesh_found": mesh_found}
    for n in sorted({1, len(audio)}):
        part = (audio[:n], face[:n], [f[:n] for f in features])
        report[f"generate_batch{n}"] = full_vs_region(lambda: model.generate(*part),
                                                      lambda: model.generate(*part, region=rect), rect, n, repeats)
    # a rectangle of a size not seen yet: what a first call with a new shape adds (kernel set-up)
    grown = rect.expand(1, size, size)
    timing, _ = time_pair([("new", lambda: model.generate(audio, face, features, region=grown))], len(audio), 0)
    report["new_rect_first_call_cpu_ms_per_frame"] = timing["new"]["cpu_ms_per_frame"]
    torch.manual_seed(0)
    hr = HRDecoder(hr_rescaling).eval().to(memory_format=torch.channels_last)
    x = torch.rand(len(audio), 6, size, size).contiguous(memory_format=torch.channels_last)
    hr_rect = rect.scaled(hr_rescaling)
    report[f"hr_decoder_x{hr_rescaling}_batch{len(x)}"] = full_vs_region(
        lambda: hr(x), lambda: hr.forward_region(x, hr_rect), hr_rect, len(x), repeats)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="HyperLipsBase weights (default: random init, seed 0)")
    parser.add_argument("--audio", help="driving audio (default: synthetic speech)")
    parser.add_argument("--batch", type=int, default=8, help="frames per generate call (inference's default)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (the fastest counts)")
    parser.add_argument("--calibration", type=int, default=2,
                        help="batches before the timed one (infer_int8 calibrates on 2)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--hr-rescaling", type=int, default=1, choices=[1, 2, 4],
                        help="HR decoder of pasted_region: 1/2/4 = img_size 128/256/512")
    parser.add_argument("--region-only", action="store_true", help="only pasted_region (skip bf16)")
    args = parser.parse_args()
    from talkingface.model import create, load
    from talkingface.utils.runtime import keep_freed_memory

    keep_freed_memory()  # as run_talkingface.py does
    if args.threads:
        torch.set_num_threads(args.threads)  # a benchmark setting; the library never sets it
    report = dict(harness.header("cpu", args.threads), batch=args.batch, repeats=args.repeats,
                  calibration_batches=args.calibration, weights=args.checkpoint or "random init (seed 0)")
    torch.manual_seed(0)
    model = (load("HyperLipsBase", args.checkpoint) if args.checkpoint else create("HyperLipsBase")).network
    model = model.eval().to(memory_format=torch.channels_last)
    batches = make_batches(model, args)
    report["pasted_region"] = pasted_region(model, batches[-1], args.repeats, args.hr_rescaling)
    if args.region_only:
        report["peak_rss_mb"] = harness.peak_rss_mb()
        harness.print_report(report)
        return
    results = measure([("fp32", model, False), ("bf16", model, True)],
                      batches[-1], args.repeats)
    reference, ms, cpu_ms = results.pop("fp32")
    # a random-init network's crops hardly vary (std ~6 levels), which flatters every PSNR below
    report["fp32"] = {"ms_per_frame": ms, "cpu_ms_per_frame": cpu_ms,
                      "output_std_levels": round(float(reference.std()), 1)}
    for name, (crops, ms, cpu_ms) in results.items():
        report[name] = {"ms_per_frame": ms, "cpu_ms_per_frame": cpu_ms,
                        "generate_speedup": round(report["fp32"]["ms_per_frame"]["generate"] / ms["generate"], 2)}
        report[name]["psnr_db"], report[name]["psnr_db_worst_crop"] = psnr(crops, reference)
        report[name]["keeps_40db"] = report[name]["psnr_db_worst_crop"] >= PSNR_RULE_DB
    report["peak_rss_mb"] = harness.peak_rss_mb()
    harness.print_report(report)


if __name__ == "__main__":
    main()
