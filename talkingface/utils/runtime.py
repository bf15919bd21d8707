"""Process-wide CPU settings, applied by the entry points before the first large tensor.

glibc's malloc hands every block over its mmap threshold (at most 32 MB) straight back to the
kernel when it is freed, so the next feature map of that size is faulted in again page by page,
zero-filled. A HyperLips training step allocates and frees dozens of such maps (one 128x128x64
map of 10 frames is 42 MB): on the 2-core test machine that page-faulting made element-wise ops
on such maps several times slower than their arithmetic (tests/unit/utils/test_runtime.py counts the faults).
`keep_freed_memory` makes malloc serve large blocks from its heap and keep what is freed for the
next step. The price is resident memory: nothing freed goes back to the kernel, and the heap
fragments, so peak RSS grows (docs/benchmarks.md: bench_train.py with and without the opt-out).

Opt out with TALKINGFACE_DEFAULT_MALLOC=1 (for example to compare with an untuned process).
"""
import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# <malloc.h> parameter numbers of mallopt
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_applied = None


def keep_freed_memory():
    """Tune glibc malloc for large, recurring tensors; returns True when the setting is active.

    A no-op (False) off Linux/glibc, when opted out, or when mallopt refuses.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("TALKINGFACE_DEFAULT_MALLOC", "") not in ("", "0"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # no mmap-ed blocks: big tensors come from the heap; and never trim the heap's free top
    _applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    if not _applied:
        logger.debug("mallopt refused the settings; keeping malloc's defaults")
    return _applied


def use_bf16(setting, device):
    """infer_bf16: true/false, or auto = on for CPUs with native bfloat16 support."""
    # lazy: torch takes ~2 s to import; the entry points import this module to tune malloc before
    # they load it, and the scorer's CLI (evaluator/score.py) answers a bad path without it
    import torch

    if isinstance(setting, bool):  # else auto: config/schema.py admits nothing else
        return setting
    if device.type != "cpu":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def usable_cpus():
    """CPUs for this process's workers: the affinity mask's (not the host's count, in containers),
    shared evenly among the ranks a launcher started on this machine (LOCAL_WORLD_SIZE)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    return max(1, cpus // max(1, local_ranks))
