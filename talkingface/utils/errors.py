"""User-facing errors: raised anywhere, printed by the entry point as one line; and the helpers
that check a user's number and show a user's value in such a line, whatever its size."""
import math


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


def finite_number(value):
    """`value` as a float when it is a real, finite number (a bool is not), else None. A Python int
    too large for a float is None too, not an OverflowError."""
    if isinstance(value, bool) or type(value).__name__ == "bool_" or (
            not isinstance(value, (int, float)) and type(value).__module__ != "numpy"):
        return None
    try:
        number = float(value)
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def short_repr(value, limit=40):
    """`value` for an error line, at most about `limit` characters (a 5000-digit int included)."""
    try:
        text = repr(value)
    except ValueError:  # Python refuses to print an int of more than 4300 digits
        text = f"an integer of {value.bit_length()} bits"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def error_line(exc):
    """The one line a TalkingFaceError shows. One raised in a DataLoader worker process reaches the
    main process re-made with torch's whole report ("Caught InputError in DataLoader worker process
    0.\nOriginal Traceback ...\ntalkingface.utils.errors.InputError: <message>"): its last line holds
    the message."""
    text = str(exc).strip()
    if text.startswith("Caught ") and "\n" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())
