"""How one comparison is measured: interleaved pairs of calls, median ratios, peak memory.

Both sides of a comparison run in the same process on the same data, alternately (A B, B A,
A B, ...), so that drift in the machine's speed (these machines are shared) hits both alike; the
figure of merit is the median over pairs of ``time(crossent) / time(peer)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: A sample is at least this long: fast calls are repeated within one sample.
MIN_SAMPLE_SECONDS = 0.02

# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _allocator(phase: str) -> None:
    """Set glibc's allocator for a phase of the measurement (where there is glibc).

    ``"time"``: as a long-running process has it. glibc starts handing every block above
    128 KiB back to the system on free, and raises that threshold as blocks are freed, up to
    32 MiB; a training loop is past that within its first steps. Timed at 128 KiB instead,
    every call pays page faults for each of its buffers, and a kernel that works through
    1 MiB blocks pays them per block, which no user's process does.
    ``"memory"``: every block above 128 KiB handed back at once, so that the high-water mark
    of one call shows all of its temporaries.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    if phase == "time":
        mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)
        mallopt(_M_TRIM_THRESHOLD, 64 * 2**20)
    else:
        mallopt(_M_MMAP_THRESHOLD, 128 * 2**10)
        mallopt(_M_TRIM_THRESHOLD, 0)


def _sync(out: Any) -> None:
    """Wait for asynchronous results (JAX dispatches and returns at once)."""
    ready = getattr(out, "block_until_ready", None)
    if ready is not None:
        ready()
    elif isinstance(out, tuple):
        for item in out:
            _sync(item)


def _once(func: Callable[[], Any]) -> float:
    start = time.perf_counter()
    _sync(func())
    return time.perf_counter() - start


def _calls_per_sample(func: Callable[[], Any]) -> int:
    single = min(_once(func) for _ in range(3))
    return max(1, math.ceil(MIN_SAMPLE_SECONDS / max(single, 1e-9)))


def _sample(func: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = func()
    _sync(out)
    return (time.perf_counter() - start) / calls


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def peak_memory(func: Callable[[], Any]) -> int | None:
    """Bytes the process's resident set grew by, at its peak, during one call.

    Reads Linux's high-water mark after resetting it (``/proc/self/clear_refs``), so that it
    sees every allocator: NumPy's, torch's, XLA's. :func:`compare` first sets glibc to return
    large blocks on free (``_allocator("memory")``), so that each call's temporaries show.
    None where the platform cannot tell.
    """
    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = _rss_bytes("VmRSS:")
        out = func()
        _sync(out)
        peak = _rss_bytes("VmHWM:")
    except OSError:
        return None
    del out
    return max(0, peak - before)


@dataclass
class Comparison:
    """One measured comparison: crossent against a peer on one input."""

    suite: str
    name: str
    shape: tuple[int, ...]
    dtype: str
    ours: str
    peer: str
    ratio: float
    ours_seconds: float
    peer_seconds: float
    ours_peak_bytes: int | None
    peer_peak_bytes: int | None
    input_bytes: int
    output_bytes: int
    pairs: int
    #: What extra memory is judged against where not the input (the dense logits' bytes), or 0.
    reference_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["shape"] = list(self.shape)
        return out


def compare(
    ours: Callable[[], Any],
    peer: Callable[[], Any],
    *,
    pairs: int,
    memory: bool = True,
) -> tuple[float, float, float, int | None, int | None]:
    """Time ``ours`` against ``peer`` in interleaved pairs.

    Returns the median of the per-pair ratios, each side's median time, and each side's peak
    memory during one call.
    """
    _allocator("time")
    for func in (ours, peer):  # warm up: compile, fill caches, start thread pools
        _once(func)
        _once(func)
    calls = max(_calls_per_sample(ours), _calls_per_sample(peer))
    ratios, ours_times, peer_times = [], [], []
    for i in range(pairs):
        order = [(ours, ours_times), (peer, peer_times)]
        if i % 2:
            order.reverse()
        for func, times in order:
            times.append(_sample(func, calls))
        ratios.append(ours_times[-1] / peer_times[-1])
    _allocator("memory")
    ours_peak = peak_memory(ours) if memory else None
    peer_peak = peak_memory(peer) if memory else None
    return (
        statistics.median(ratios),
        statistics.median(ours_times),
        statistics.median(peer_times),
        ours_peak,
        peer_peak,
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    memory_gib = None
    with contextlib.suppress(OSError, LookupError):
        memory_gib = round(_rss_bytes_total() / 2**30, 1)
    return {
        "cpu": model,
        "cores": cores,
        "memory_gib": memory_gib,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _rss_bytes_total() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise LookupError("MemTotal")
