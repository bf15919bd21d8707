"""Evaluator: lip-sync every clip of a split exactly as inference does and score what users get.

    results = evaluate_checkpoint(config)                     # --mode=evaluate: networks from checkpoints
    results = Evaluator(config).evaluate(syncer, split="val") # any LipSyncer (the trainer's networks)

For each clip (read_filelist) the source video's frames [first_frame, first_frame + n_frames) and
the clip's own audio go through `LipSyncer.run` (talkingface.inference.pipeline: the one tracker,
the reference_frame policy, the precision infer_bf16/infer_int8, the networks, the paste-back, the mp4
encoding) into an mp4, as with --mode=infer; its decoded frames and the real frames are then cut
with the same boxes (the tracker's, found on the real frames) at crop_size and scored; LSE gets
the output frames cut with syncnet_python's geometry. So a clip's PSNR/SSIM/LMD equal what
`python -m talkingface.evaluator.score --size <crop_size>` gives for the --mode=infer output of its
video and audio. (The encoding matters: crf 18 costs the demo clips ~0.3 dB PSNR and 0.02 SSIM.)
The metrics of config["metrics"] (METRICS registry, definitions in metrics.py) are computed per
clip; "mean" is the average of the per-clip values (counts are summed; FID is computed once over
all frames). Writes config["results_dir"]/metrics.json (strict JSON: inf as "inf") with the
provenance (split, counts, checkpoints, reference policy, precision, tracker, toolkit commit) and
logs a table under a header saying the same. Under torchrun every rank lip-syncs and scores its
share of the clips (`deal`) and rank 0 merges them into the metrics.json one process writes (the
same numbers and clip order, plus "world_size"); call it on every rank.
"""
import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from talkingface.data.dataprocess.hyperlipsbase_process import split_file_records
from talkingface.data.dataset.clip import Clip, read_filelist
from talkingface.evaluator.metrics import METRICS_DOC, EvalSample, build_metrics
from talkingface.evaluator.report import NON_FINITE_NOTE, format_table, json_safe
from talkingface.model.syncnet_v2 import syncnet_crop_geometry, syncnet_crops
from talkingface.inference.arrays import ArraySource
from talkingface.inference.engine import backend_of
from talkingface.inference.networks import checkpoint_paths, load_inference_networks
from talkingface.inference.pipeline import LipSyncer
from talkingface.inference.settings import precision
from talkingface.utils.audio import FPS, SAMPLES_PER_FRAME, load_audio
from talkingface.utils import distributed as dist_utils
from talkingface.utils.errors import InputError
from talkingface.utils.face import crop_resize
from talkingface.utils.files import write_json_atomic
from talkingface.utils.fingerprint import checkpoint_fingerprint
from talkingface.utils.run_record import run_record, toolkit_commit
from talkingface.utils.seed import init_seed
from talkingface.utils.tracking import tracker_settings
from talkingface.utils.video import read_frames

logger = logging.getLogger(__name__)


@dataclass
class ScoredClip:
    """One clip's scores as they travel between ranks: `values` (its per_clip row), and per metric
    the raw `results` its summarize takes and the `states` its finish takes (FID's features)."""
    name: str
    values: dict
    results: dict
    states: dict


def score_clips(metrics, samples, progress=None):
    """Run `metrics` over an iterable of EvalSample: a ScoredClip per sample."""
    scored = []
    for sample in tqdm(samples, desc="evaluate", total=progress, disable=not dist_utils.is_main_process()):
        values, results, states = {"frames": len(sample.generated)}, {}, {}
        for metric in metrics:
            results[metric.name] = metric.compute(sample)
            states[metric.name] = metric.clip_state()
            values.update(results[metric.name])
        scored.append(ScoredClip(sample.name, values, results, states))
    return scored


def summarize_clips(metrics, scored):
    """(per_clip {name: values}, mean values) of ScoredClips in their order: each metric's
    summarize over the clips' results, its finish over their states (FID: all frames at once)."""
    per_clip = {clip.name: clip.values for clip in scored}
    mean = {"frames": int(sum(v["frames"] for v in per_clip.values()))}
    for metric in metrics:
        metric.restore([clip.states[metric.name] for clip in scored])
        mean.update(metric.summarize([clip.results[metric.name] for clip in scored]))
        mean.update(metric.finish())
    return per_clip, mean


def score_samples(metrics, samples, progress=None):
    """Run `metrics` over an iterable of EvalSample: (per_clip {name: values}, mean values)."""
    return summarize_clips(metrics, score_clips(metrics, samples, progress))


def clip_frames(clip, max_frames):
    """Frames of `clip` that evaluation generates (eval_max_frames caps them; 0 = all)."""
    return min(clip.n_frames, max_frames) if max_frames else clip.n_frames


def deal(clips, rank, world_size, max_frames=0):
    """The clips rank `rank` of `world_size` scores: the longest first, dealt in turn (rank r takes
    r, r + W, ... of that order), so the ranks' work evens out. Ties keep the split's order."""
    longest_first = sorted(clips, key=lambda clip: clip_frames(clip, max_frames), reverse=True)
    return longest_first[rank::world_size]


def read_clip_frames(clip, path, n):
    """The clip's first `n` full frames from its source video (BGR uint8); a video that now decodes
    shorter is a one-line InputError."""
    frames = list(itertools.islice(clip.source_frames(path), n))
    if len(frames) < n:
        first = int(clip.meta.get("first_frame", 0))
        raise InputError(f"{path} decodes to {first + len(frames)} frames, but clip {clip.id} needs frames "
                         f"{first}..{first + n - 1}: preprocess the dataset again")
    return frames


def cut_pair(output, real, boxes, size, pad_bottom, sync=True):
    """Face crops of the output and the real frames with the same boxes (frames without a face left
    out), and with `sync` LSE's syncnet_python crops of the output (its box without our chin pad;
    None when the clip is too short for that geometry's 13-frame median filter)."""
    keep = [k for k in range(min(len(output), len(real), len(boxes))) if np.isfinite(boxes[k]).all()]
    if not keep:
        return None
    generated = np.stack([crop_resize(output[k], boxes[k], size) for k in keep])
    truth = np.stack([crop_resize(real[k], boxes[k], size) for k in keep])
    face_boxes = np.array(boxes[keep], dtype=np.float64)
    face_boxes[:, 3] -= pad_bottom
    if not sync or syncnet_crop_geometry(face_boxes)[2].min() < 1:
        return generated, truth, None, keep
    return generated, truth, syncnet_crops([output[k] for k in keep], face_boxes), keep


class Evaluator:
    def __init__(self, config):
        self.config = config

    def _clips(self, split):
        clip_dirs = read_filelist(self.config, split)
        if not clip_dirs:
            raise InputError(f"the {split} split has no clips: preprocess more videos or choose another split "
                             "(eval_split)")
        max_clips = int(self.config["eval_max_clips"] or 0)
        clips = [Clip(d) for d in (clip_dirs[:max_clips] if max_clips else clip_dirs)]
        missing = [c.id for c in clips if c.source_video(self.config["data_root"]) is None]
        if missing:   # checked before any clip is generated
            raise InputError(f"the source videos of {len(missing)} clip(s) ({', '.join(missing[:3])}) are gone: "
                             f"evaluation lip-syncs the source frames; restore them under {self.config['data_root']}")
        return clips

    def _samples(self, syncer, clips, sample_ids, sync):
        """EvalSamples of `clips`; those in `sample_ids` also saved as results_dir/samples/<id>.mp4."""
        config = self.config
        max_frames = int(config["eval_max_frames"] or 0)
        size, pad = int(config["crop_size"]), int(config["face_pad_bottom"])
        for clip in clips:
            n = clip_frames(clip, max_frames)
            wav = load_audio(clip.audio_path)[:n * SAMPLES_PER_FRAME]
            n = min(n, len(wav) // SAMPLES_PER_FRAME)
            real = read_clip_frames(clip, clip.source_video(config["data_root"]), n)
            with tempfile.TemporaryDirectory(prefix="talkingface_eval_") as folder:
                video = (os.path.join(config["results_dir"], "samples", f"{clip.id}.mp4") if clip.id in sample_ids
                         else os.path.join(folder, "output.mp4"))
                result = syncer.run(ArraySource(real, fps=clip.fps), wav[:n * SAMPLES_PER_FRAME], video)
                output = read_frames(video, FPS, len(real))
            if clip.id in sample_ids:
                logger.info("sample video: %s", video)
            pair = cut_pair(output, real, result.boxes, size, pad, sync)
            if pair is None:
                logger.warning("no face found in clip %s by the tracker: clip left out", clip.id)
                continue
            generated, truth, sync_crops, keep = pair
            if len(keep) < n:
                logger.info("clip %s: %d of %d frames have a face and are scored", clip.id, len(keep), n)
            yield EvalSample(name=clip.id, generated=generated, real=truth, fps=clip.fps, sync_crops=sync_crops,
                             wav=wav[:len(output) * SAMPLES_PER_FRAME])

    def _score_share(self, syncer, clips):
        """(metrics, skipped, this rank's ScoredClips); the first eval_num_sample_videos clips of the
        split are saved as sample videos by the rank that scores them."""
        config = self.config
        metrics, skipped = build_metrics(config, config["metrics"])
        share = deal(clips, dist_utils.rank(), dist_utils.world_size(), int(config["eval_max_frames"] or 0))
        sample_ids = {clip.id for clip in clips[:int(config["eval_num_sample_videos"] or 0)]}
        samples = self._samples(syncer, share, sample_ids, any(m.name == "LSE" for m in metrics))
        return metrics, skipped, score_clips(metrics, samples, progress=len(share))

    def _facts(self, syncer, split, provenance):
        """What was scored and with what, for metrics.json and the log's header."""
        config = self.config
        commit, modified = toolkit_commit()
        bf16, int8 = precision(config, syncer.device)
        split_files = split_file_records(config)   # a published split: which lists made the filelists
        return {"model": config["model"], "dataset": config["dataset"], "split": split,
                **({"split_files": split_files} if split_files else {}),
                **(provenance or {}), "reference_frame": config["reference_frame"],
                "precision": "int8" if int8 else "bf16" if bf16 else "fp32",
                # what ran the generator: torch, or an engine (infer_backend; infer_int8 runs on onnxruntime)
                "backend": backend_of(syncer.networks(syncer.settings())[0]),
                "crop_size": int(config["crop_size"]), "tracker": tracker_settings(config),
                "max_clips": int(config["eval_max_clips"] or 0) or None,
                "max_frames_per_clip": int(config["eval_max_frames"] or 0) or None,
                "toolkit_commit": commit, "toolkit_modified": modified, "world_size": dist_utils.world_size()}

    def evaluate(self, syncer, split="val", provenance=None):
        """Score `syncer` (a LipSyncer with its networks) on `split`; `provenance`: the checkpoint
        facts to record (checkpoint, base_checkpoint, global_step). Under torchrun every rank calls
        it and scores its share; rank 0 returns the results, the other ranks None."""
        config = self.config
        init_seed(config["seed"], config["reproducible"])
        clips = self._clips(split)
        started = time.time()
        group = dist_utils.patient_group()   # ranks finish their shares far apart
        metrics, skipped, scored, error = [], {}, [], None
        try:
            metrics, skipped, scored = self._score_share(syncer, clips)
        except Exception as exc:    # told to every rank below: none may wait for this one forever
            error = exc
        dist_utils.raise_if_any_failed(error, group)
        scored = merge_shares(dist_utils.gather_object(scored, group), clips)
        per_clip, mean = summarize_clips(metrics, scored)     # elsewhere than rank 0: frees the metrics
        if not dist_utils.is_main_process():
            return None
        results = {**self._facts(syncer, split, provenance), "clips": len(per_clip), "frames": mean["frames"],
                   "metrics": [m.name for m in metrics], "skipped": skipped, "mean": mean, "per_clip": per_clip,
                   "definitions": METRICS_DOC, "notes": NON_FINITE_NOTE, "seconds": round(time.time() - started, 1)}
        path = os.path.join(config["results_dir"], "metrics.json")
        write_json_atomic(path, json_safe(results))   # strict JSON: non-finite values spelled out
        logger.info("%s\n%s", header(results), format_table(per_clip, mean))
        logger.info("metrics written to %s", path)
        return results


def merge_shares(shares, clips):
    """The ranks' ScoredClips (gather_object's list; None off rank 0: none) in the split's order."""
    order = {clip.id: index for index, clip in enumerate(clips)}
    return sorted((scored for share in shares or [] for scored in share), key=lambda scored: order[scored.name])


def header(results):
    """The log table's header: what was scored and with what."""
    def checkpoint(record):
        if not record:
            return "-"
        step = record.get("step")
        return f"{record.get('path')}" + (f" (step {step})" if step is not None else "")
    lines = [f"evaluation of {results['model']} on {results['dataset']}/{results['split']}: "
             f"{results['clips']} clips, {results['frames']} frames (pasted back, cut at {results['crop_size']} px)",
             f"  checkpoint {checkpoint(results.get('checkpoint'))}"]
    if results.get("base_checkpoint"):
        lines.append(f"  on Base {checkpoint(results['base_checkpoint'])}")
    tracker = ", ".join(f"{k} {v}" for k, v in results["tracker"].items())
    precision_used = f"{results['precision']} on {results.get('backend', 'torch')}"
    lines.append(f"  reference_frame {results['reference_frame']}, {precision_used}, tracker: {tracker}, "
                 f"toolkit {results.get('toolkit_commit') or 'unknown commit'}"
                 f"{' (modified)' if results.get('toolkit_modified') else ''}")
    return "\n".join(lines)


def evaluate_checkpoint(config, split=None):
    """--mode=evaluate for HyperLipsBase / HyperLipsHR: the networks from their checkpoints (as
    --mode=infer loads them: no optimizer, discriminator or loss network), config["eval_split"].
    Under torchrun every rank calls it (and loads the networks); rank 0 returns the results."""
    base_path, hr_path = checkpoint_paths(config)
    syncer = LipSyncer(config, networks=load_inference_networks(config, config["device"], (base_path, hr_path)))
    main = checkpoint_fingerprint(hr_path or base_path)
    provenance = {"checkpoint": main, "global_step": main["step"]}
    if hr_path is not None:
        provenance["base_checkpoint"] = checkpoint_fingerprint(base_path)
    if dist_utils.is_main_process():
        write_json_atomic(os.path.join(config["results_dir"], "run.json"),
                          run_record(config, evaluated_checkpoint=main["path"], evaluated_step=main["step"]))
    return Evaluator(config).evaluate(syncer, split or config["eval_split"], provenance)
