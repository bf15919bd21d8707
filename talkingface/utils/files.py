"""Atomic writes: a reader (or the next run after a crash) never sees a half-written file."""
import json
import os
import tempfile


def write_text_atomic(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, data, indent=2):
    """`data` as strict JSON (NaN/inf refused: callers make them explicit first)."""
    write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")
