"""Evaluation: metrics (PSNR, SSIM, LMD, LSE, SyncScore, FID) and the Evaluator.

Names are imported on first use, so `python -m talkingface.evaluator.score` can reject a bad
path before torch is loaded.
"""
import importlib

_EXPORTS = {"Evaluator": "evaluator", "evaluate_checkpoint": "evaluator", "score_samples": "evaluator", "EvalSample": "metrics",
            "build_metrics": "metrics"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
