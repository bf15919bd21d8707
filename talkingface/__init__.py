"""HyperLips talking-face toolkit. `from talkingface import LipSync`: the Python API (api.py)."""


def __getattr__(name):
    # Imported on first use: `import talkingface.utils...` must not pull in torch and mediapipe.
    if name == "LipSync":
        from talkingface.api import LipSync
        return LipSync
    raise AttributeError(f"module 'talkingface' has no attribute '{name}'")
