"""The avatar: everything lip-sync computes per video frame that does not depend on the audio.

Per source frame (25 fps timeline) with a face: the integer face box, the 128 px crop, its
reference crop, the 128 px paste mask (face mesh of the crop), the crop's landmarks, and the
HyperLipsBase face-encoder features of [masked crop, reference] (encode_face: the face encoder
never sees the audio). They are fixed-size records in a file read through np.memmap, so memory
stays flat with the video's length:

- AvatarStore(n) on an unnamed temporary file: a run without the cache reuses the records on
  every ping-pong pass (and the still image on every frame);
- AvatarCache (--avatar_cache=on|refresh): the records of the whole video, with its face boxes,
  kept in `avatar_cache_dir` under a key made of the video's content hash and every setting that
  shapes them (tracker, mask feathering, reference policy, Base checkpoint content, precision,
  device type, library versions); a later run with the same video and another audio skips face
  tracking, face mesh and the face encoder.

Cache entries: <key>.avatar (the records) and <key>.json (metadata with the records' size and
CRC-32; written last, so it commits the entry). Both are written under temp names
(utils.files.temp_name) and renamed atomically: a killed writer leaves only a temp file, removed
by a later run, never an entry that is read. A reader checks size and CRC-32; a bad entry is
ignored (one log line) and rebuilt. Concurrent writers of one key each rename a complete entry.
The folder is kept under `avatar_cache_mb` by deleting the least recently used entries; an
entry larger than the whole limit is not kept at all (the run that made it uses it, one log line).
"""
import dataclasses
import errno
import hashlib
import json
import logging
import os
import tempfile
import time
import zlib

import numpy as np

from talkingface.model.inputs import BASE_SIZE
from talkingface.utils.errors import ConfigError
from talkingface.utils.face import N_MESH_LANDMARKS
from talkingface.utils.files import probe_writable, remove_stale_temp_files, temp_name, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
# HyperLipsBase.encode_face at 128 px, stored channels-last (H, W, C) like the network's tensors
FEATURE_SHAPES = ((64, 64, 16), (32, 32, 24), (16, 16, 40), (8, 8, 128))
CACHE_MODES = ("off", "on", "refresh")
ORPHAN_SECONDS = 600  # records without metadata older than this are debris

RECORD = np.dtype([
    ("ready", "u1"), ("has_landmarks", "u1"), ("box", "<i4", (4,)),
    ("crop", "u1", (BASE_SIZE, BASE_SIZE, 3)), ("reference", "u1", (BASE_SIZE, BASE_SIZE, 3)),
    ("mask", "<f4", (BASE_SIZE, BASE_SIZE)), ("landmarks", "<f4", (N_MESH_LANDMARKS, 2)),
] + [(f"f{i + 1}", "<f4", shape) for i, shape in enumerate(FEATURE_SHAPES)])


@dataclasses.dataclass
class FaceRecord:
    box: tuple
    crop: np.ndarray
    reference: np.ndarray
    mask: np.ndarray          # (128, 128) float32 paste weight, resized to the box when pasted
    landmarks: np.ndarray     # (468, 2) at 128 px, or None
    features: tuple = None    # four (H, W, C) float32 arrays


class AvatarStore:
    """n fixed-size records in a file (an unnamed temporary one by default), by source index."""

    def __init__(self, n, path=None, mode="w+"):
        self.n = int(n)
        self.path = path
        if path is None:
            self._file = tempfile.TemporaryFile(prefix="talkingface_avatar_")
            self._file.truncate(max(1, self.n) * RECORD.itemsize)
            self.records = np.memmap(self._file, dtype=RECORD, mode="r+", shape=(self.n,))
        else:
            self._file = None
            self.records = np.memmap(path, dtype=RECORD, mode=mode, shape=(self.n,))

    def ready(self, index):
        return bool(self.records["ready"][index])

    def get(self, index):
        r = self.records[index]
        return FaceRecord(tuple(int(v) for v in r["box"]), r["crop"], r["reference"], r["mask"],
                          r["landmarks"] if r["has_landmarks"] else None,
                          tuple(r[f"f{i + 1}"] for i in range(len(FEATURE_SHAPES))))

    def put(self, index, record):
        r = self.records[index]
        r["box"] = record.box
        r["crop"], r["reference"], r["mask"] = record.crop, record.reference, record.mask
        r["has_landmarks"] = record.landmarks is not None
        if record.landmarks is not None:
            r["landmarks"] = record.landmarks
        for i, feature in enumerate(record.features):
            r[f"f{i + 1}"] = feature
        r["ready"] = 1

    def close(self):
        self.records = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _crc32(path):
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            crc = zlib.crc32(block, crc)
    return crc


def cache_key(video_sha256, settings):
    """The entry name: a hash of the video's content and of `settings` (a JSON-able dict)."""
    text = json.dumps({"video": video_sha256, "format": FORMAT_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class EntryTooLarge(OSError):
    """An avatar whose entry alone exceeds avatar_cache_mb (AvatarCache.save keeps it out)."""

    def __init__(self, size, limit_mb):
        need = -(-size // 2 ** 20)  # whole MB, rounded up: the smallest limit that keeps it
        super().__init__(errno.EFBIG, f"its entry of {size / 2 ** 20:.1f} MB is larger than avatar_cache_mb="
                                      f"{limit_mb:g}, so it was not kept; set avatar_cache_mb={need} or more "
                                      "to keep it")


class AvatarCache:
    """Entries in `folder`, at most `limit_mb` in all (least recently used ones go first)."""

    def __init__(self, folder, limit_mb):
        self.folder = str(folder)
        self.limit_mb = float(limit_mb)
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"avatar_cache_dir={self.folder} cannot be created ({exc.strerror}): "
                              "set avatar_cache_dir to a writable folder or avatar_cache=off") from None
        try:  # a folder that exists but takes no files (permissions, a read-only filesystem)
            probe_writable(self.folder)
        except OSError as exc:
            raise ConfigError(f"avatar_cache_dir={self.folder} is not writable ({exc.strerror or type(exc).__name__}): "
                              "set avatar_cache_dir to a writable folder or avatar_cache=off") from None
        remove_stale_temp_files(self.folder)

    def _paths(self, key):
        return os.path.join(self.folder, key + ".avatar"), os.path.join(self.folder, key + ".json")

    def load(self, key):
        """(meta, read-only AvatarStore) of a valid entry, else None (a bad one is logged)."""
        records, meta_path = self._paths(key)
        if not os.path.exists(meta_path):
            return None
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            size = os.path.getsize(records)
            if (meta.get("format") != FORMAT_VERSION or meta.get("record_bytes") != RECORD.itemsize
                    or size != meta["n_frames"] * RECORD.itemsize or _crc32(records) != meta["crc32"]):
                raise ValueError("size or checksum mismatch")
            store = AvatarStore(meta["n_frames"], records, mode="r")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("avatar cache entry %s is unreadable (%s): it is rebuilt", records, exc)
            self.remove(key)
            return None
        os.utime(meta_path)  # recently used
        return meta, store

    def new_store(self, key, n_frames):
        """A writable AvatarStore under a temp name, committed by save(); an unnamed temporary one
        when its records alone exceed the limit (save() then refuses it)."""
        if n_frames * RECORD.itemsize > self.limit_mb * 2 ** 20:
            return AvatarStore(n_frames)
        records, _ = self._paths(key)
        return AvatarStore(n_frames, str(temp_name(records)), mode="w+")

    def save(self, key, store, meta):
        """Commit a filled store: records renamed first, then the metadata that makes it valid.

        An entry larger than the whole limit is not kept (LRU eviction could only remove it again):
        EntryTooLarge, an OSError, so the run goes on uncached with the store it filled, and the
        caller's log line says why (the caller discards the store's temp file)."""
        records, meta_path = self._paths(key)
        meta = dict(meta, format=FORMAT_VERSION, record_bytes=RECORD.itemsize, n_frames=store.n)
        # the entry's size as entries() counts it; the CRC-32 is not known yet: its widest value
        size = store.n * RECORD.itemsize + len(json.dumps(dict(meta, crc32=2 ** 32 - 1), indent=2)) + 1
        if size > self.limit_mb * 2 ** 20:  # (new_store made it an unnamed temporary file)
            raise EntryTooLarge(size, self.limit_mb)
        store.records.flush()
        meta["crc32"] = _crc32(store.path)
        os.replace(store.path, records)
        store.path = records
        write_json_atomic(meta_path, meta)
        self.evict(keep=key)

    def discard(self, store):
        """Drop an uncommitted store (an interrupted or failed preparation)."""
        if store.path and os.path.basename(store.path).startswith("."):
            try:
                os.remove(store.path)
            except OSError:
                pass

    def remove(self, key):
        for path in self._paths(key)[::-1]:  # metadata first: the entry stops being valid at once
            try:
                os.remove(path)
            except OSError:
                pass

    def entries(self):
        """[(key, bytes, last use)] of the committed entries."""
        out = []
        for name in os.listdir(self.folder):
            if name.endswith(".json") and not name.startswith("."):
                key = name[:-5]
                records, meta_path = self._paths(key)
                try:
                    out.append((key, os.path.getsize(records) + os.path.getsize(meta_path),
                                os.path.getmtime(meta_path)))
                except OSError:
                    pass
        return out

    def evict(self, keep=None):
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        for key, size, _ in entries:
            if total <= self.limit_mb * 2 ** 20:
                break
            if key != keep:
                logger.info("avatar cache over %d MB: removing the least recently used entry %s", self.limit_mb, key)
                self.remove(key)
                total -= size
        # records whose metadata is gone (removed above, or a writer killed between the renames)
        # (not a fresh one: a concurrent writer renames its metadata just after its records)
        for name in os.listdir(self.folder):
            path = os.path.join(self.folder, name)
            if name.endswith(".avatar") and not name.startswith("."):
                try:
                    if (not os.path.exists(path[:-7] + ".json")
                            and time.time() - os.path.getmtime(path) > ORPHAN_SECONDS):
                        os.remove(path)
                except OSError:
                    pass

    def clear(self):
        for key, _, _ in self.entries():
            self.remove(key)
        self.evict()
