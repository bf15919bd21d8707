"""Atomic writes: a reader (or the next run after a crash) never sees a half-written file; and
temp file names that make what a killed process left behind recognisable, so it can be removed."""
import json
import logging
import os
import re
import socket
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

# A temp file beside its target: .<stem>.tmp-<host>-<pid>-<random><suffix>. Host and PID make a
# leftover of a killed process (kill -9, power loss) provably stale: same host, process gone.
_TEMP_RE = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9._-]+)-(?P<pid>\d+)-[0-9a-f]{8}(\.[A-Za-z0-9]+)?$")


def _host():
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def temp_name(path, suffix=None):
    """A fresh temp file name beside `path` (suffix: the path's own by default) that
    remove_stale_temp_files recognises once this process is gone."""
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    return path.with_name(f".{path.stem}.tmp-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temp_files(folder):
    """Delete the temp_name files in `folder` whose process, on this host, no longer runs.
    Returns their paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = _host()
    for name in names:
        match = _TEMP_RE.match(name)
        if match is None or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        try:
            os.remove(os.path.join(folder, name))
            removed.append(Path(folder) / name)
        except OSError:
            pass
    if removed:
        logger.info("removed %d temp file(s) of interrupted runs in %s", len(removed), folder)
    return removed


def probe_writable(folder):
    """Create `folder` (and its parents) if needed, then create and remove a temp_name file in it:
    an OSError says, before any long work, that files cannot be written there (permissions, a
    read-only filesystem, a parent that is a file). Root passes permission bits but not the rest."""
    os.makedirs(folder, exist_ok=True)
    probe = temp_name(os.path.join(folder, "probe"))
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.remove(probe)


def write_atomic(path, write, binary=False, sync=False):
    """write(file) into a fresh temp file beside `path`, then rename it to `path` (after an fsync
    when `sync`), so a reader sees the old file or the whole new one. Temp files that killed
    writers left in the folder are removed afterwards."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = temp_name(os.path.abspath(path))
    try:
        descriptor = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with (open(descriptor, "wb") if binary else open(descriptor, "w", encoding="utf-8")) as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    remove_stale_temp_files(folder)


def write_text_atomic(path, text):
    write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path, data, indent=2):
    """`data` as strict JSON (NaN/inf refused: callers make them explicit first)."""
    write_text_atomic(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")
