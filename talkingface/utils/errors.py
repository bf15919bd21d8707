"""User-facing errors: raised anywhere, printed by the entry point as one line."""


class TalkingFaceError(Exception):
    """Something the user can fix (bad input, missing file, wrong config).

    The message must say what is wrong and what to do; the entry point prints it as a single
    line without a traceback.
    """


class ConfigError(TalkingFaceError):
    """A bad or unknown configuration key or value."""


class InputError(TalkingFaceError):
    """A video, audio or image that cannot be used (missing, corrupt, no face, too short)."""


class CheckpointError(TalkingFaceError):
    """A missing checkpoint, or one that belongs to another model or resolution."""
