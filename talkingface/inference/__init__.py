"""Lip-sync a video or a photo to an audio track with a trained HyperLips model (--mode=infer)."""
from talkingface.inference.pipeline import InferenceResult, LipSyncer, run_inference

__all__ = ["run_inference", "InferenceResult", "LipSyncer"]
