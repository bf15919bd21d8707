"""Lip-sync a video or a photo to an audio track with a trained HyperLips model (LipSyncer; its
--mode=infer entry point is talkingface/quick_start/infer_mode.py), or a CSV of such jobs (--jobs, batch.py)."""
from talkingface.inference.pipeline import InferenceResult, LipSyncer
from talkingface.inference.batch import run_batch

__all__ = ["run_batch", "InferenceResult", "LipSyncer"]
