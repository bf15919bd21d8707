from talkingface.quick_start.quick_start import run

__all__ = ["run"]
