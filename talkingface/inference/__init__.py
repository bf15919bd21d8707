"""Lip-sync a video or a photo to an audio track with a trained HyperLips model (--mode=infer),
or a CSV of such jobs (--jobs, batch.py)."""
from talkingface.inference.pipeline import InferenceResult, LipSyncer, run_inference
from talkingface.inference.batch import run_batch

__all__ = ["run_inference", "run_batch", "InferenceResult", "LipSyncer"]
