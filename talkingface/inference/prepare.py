"""Tracking and avatar, before generation: a LipSyncRenderer whose face boxes are known and whose
avatar (per source frame, avatar.py) is ready or filled as frames come.

With avatar_cache on (or `whole_video`: a stream), the avatar is the whole video, prepared before
generation starts, and cached on disk when the cache is on; a later run with the same video (and
the same settings that shape it: avatar_settings) skips tracking and the face encoder. Without
it, only the frames the output shows are tracked (the first n_out) and the avatar is kept in a
temporary store when frames repeat (ping-pong, a still image).
"""
import hashlib
import logging

import cv2
import numpy as np
import torch

from talkingface.inference.avatar import AvatarCache, AvatarStore, cache_key
from talkingface.inference.profile import OFF
from talkingface.inference.render import ENCODER_BATCH, LipSyncRenderer
from talkingface.inference.source import FrameSource
from talkingface.inference.tracking import detect_every, track_source
from talkingface.utils.fingerprint import file_sha256
from talkingface.utils.tracking import TRACKER_KEYS

logger = logging.getLogger(__name__)


def weights_digest(network):
    """sha256 of a network's weights (part of the avatar cache key: the face encoder's features)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        tensor = tensor.detach().cpu().contiguous(memory_format=torch.contiguous_format)
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def avatar_settings(base_digest, settings):
    """Everything besides the video that shapes a cached avatar (its cache key)."""
    # lazy: mediapipe takes ~1 s to import; utils.face loads it when the face mesh first runs,
    # and only its version is read here
    import mediapipe

    return {"tracker": {key: settings[key] for key in TRACKER_KEYS}, "detect_every": detect_every(settings),
            "feather": settings["infer_mask_feather"],
            "reference": settings.reference, "base_weights": base_digest, "bf16": bool(settings.bf16),
            "device": settings.device.type, "encoder_batch": ENCODER_BATCH, "torch": torch.__version__,
            "mediapipe": mediapipe.__version__, "opencv": cv2.__version__}


def prepare_renderer(networks, source, settings, n_out, base_digest=None, progress=None, profiler=OFF,
                     whole_video=False):
    """A LipSyncRenderer over `source` (its boxes in .boxes): from the avatar cache when on and
    valid, else tracked (tracking.py) and, for the whole video, prepared now.

    networks: (base as the run uses it, hr or None); base_digest: a callable giving
    weights_digest of the Base weights (the cache key; called only with the cache on)."""
    mode = {False: "off", True: "on"}.get(settings["avatar_cache"], settings["avatar_cache"])
    path = getattr(source, "path", None) if isinstance(source, FrameSource) else None
    use_cache = mode != "off" and path is not None
    whole_video = whole_video or use_cache
    cache = key = None
    if use_cache:
        with profiler.stage("avatar_cache"):
            cache = AvatarCache(settings["avatar_cache_dir"], settings["avatar_cache_mb"])
            key = cache_key(file_sha256(path), avatar_settings(base_digest(), settings))
            hit = cache.load(key) if mode == "on" else None
        if hit is not None:
            meta, store = hit
            logger.info("avatar cache hit: %s (%d frames)", store.path, store.n)
            boxes = np.array([[np.nan] * 4 if b is None else b for b in meta["boxes"]], np.float32)
            source.n_frames = store.n
            source.width, source.height = meta["size"]
            if store.n == 1:  # a still image: play() repeats its one decoded frame
                for _ in source.scan():
                    pass
            return _renderer(networks, boxes, source, settings, store, profiler)
    boxes = track_source(source, settings, n_out, whole_video, progress, profiler)
    n_src = source.n_frames
    if n_out > n_src > 1:
        logger.info("the audio is longer than the video (%d > %d frames): the video loops ping-pong", n_out, n_src)
    if not whole_video:
        store = AvatarStore(n_src) if n_out > n_src else None  # frames repeat: keep their avatar
        return _renderer(networks, boxes, source, settings, store, profiler)
    store = cache.new_store(key, n_src) if use_cache else AvatarStore(n_src)
    renderer = _renderer(networks, boxes, source, settings, store, profiler)
    try:
        batch = []
        # keep=True: generation reads these frames back from the raw frame cache (2 decodes, not 3)
        for src, frame in profiler.timed_iter(source.play(n_src, keep=True), "decode"):
            batch.append((src, frame))
            if len(batch) == ENCODER_BATCH or src == n_src - 1:
                renderer.prepare(batch)
                batch = []
        if use_cache:
            meta = {"boxes": [None if not np.isfinite(b).all() else [float(v) for v in b] for b in boxes],
                    "video": path, "size": [source.width, source.height]}
            try:
                with profiler.stage("avatar_cache"):
                    cache.save(key, store, meta)
                logger.info("avatar cached: %s (%d frames)", store.path, n_src)
            except OSError as exc:  # a full disk: this run goes on, uncached
                logger.warning("the avatar could not be cached in %s (%s)", cache.folder, exc.strerror or exc)
                cache.discard(store)
    except BaseException:
        renderer.close()
        store.close()
        if use_cache:
            cache.discard(store)
        raise
    return renderer


def _renderer(networks, boxes, source, settings, store, profiler):
    base, hr = networks
    return LipSyncRenderer(base, hr, boxes, (source.width, source.height), settings, store=store,
                           frame_at=getattr(source, "frame_at", None), profiler=profiler)
