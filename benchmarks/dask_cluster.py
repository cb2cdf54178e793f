"""Throughput of ``cross_entropy`` on a ``dask.distributed`` cluster, against NumPy crossent on
the same machine, and the peak memory of each worker against its limit:
``python benchmarks/dask_cluster.py 32768x32768 --workers 2 --memory-limit 1GiB``.

The float32 logits are generated lazily, a block at a time, by the task that needs them (as
``dask.array.random`` does), so that they never exist whole; NumPy makes the same blocks and
computes each slab of rows with crossent's NumPy kernel. Throughput is gigabytes of logits per
second, generation included on both sides. Three runs on one cluster: crossent's one-pass
graph, the standard-only graph (``generic_only``: a maximum, then the sum of exponentials, then
the target's logit, three reductions), and NumPy. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from typing import Any

import dask.array as da
import numpy as np

import crossent
from crossent._dispatch import generic_only

BLOCK = (2048, 4096)  # 32 MiB of float32


def block(row: int, column: int) -> np.ndarray:
    """The block of logits at ``(row, column)``, the same wherever it is made."""
    rng = np.random.default_rng([11, row, column])
    return rng.standard_normal(BLOCK, dtype=np.float32) * np.float32(3.0)


def targets(row: int, classes: int) -> np.ndarray:
    return np.random.default_rng([12, row]).integers(0, classes, BLOCK[0])


def _block(block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None
    return block(*block_info[None]["chunk-location"])


def _targets(classes: int, block_info: dict[Any, Any] | None = None) -> np.ndarray:
    assert block_info is not None
    return targets(block_info[None]["chunk-location"][0], classes)


def lazy(shape: tuple[int, int]) -> tuple[da.Array, da.Array]:
    rows, columns = shape[0] // BLOCK[0], shape[1] // BLOCK[1]
    logits = da.map_blocks(
        _block,
        dtype=np.float32,
        chunks=((BLOCK[0],) * rows, (BLOCK[1],) * columns),
        meta=np.empty((0, 0), np.float32),
    )
    target = da.map_blocks(
        _targets,
        shape[1],
        dtype=np.int64,
        chunks=((BLOCK[0],) * rows,),
        meta=np.empty(0, np.int64),
    )
    return logits, target


def numpy_slabs(shape: tuple[int, int]) -> float:
    total = 0.0
    for row in range(shape[0] // BLOCK[0]):
        slab = np.concatenate([block(row, c) for c in range(shape[1] // BLOCK[1])], axis=1)
        total += float(crossent.cross_entropy(slab, targets(row, shape[1]), reduction="sum"))
    return total / shape[0]


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _on_cluster(client: Any, loss: da.Array) -> dict[str, Any]:
    """Compute ``loss``, sampling each worker's resident memory every 50 ms."""
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                for worker, rss in client.run(_rss).items():
                    peaks[worker] = max(peaks.get(worker, 0), rss)
            except Exception:  # a worker that died answers no more
                pass
            done.wait(0.05)

    pids = client.run(os.getpid)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        value: float | None = float(loss.compute())
        error = None
    except Exception as e:  # KilledWorker: the figure to report
        value, error = None, type(e).__name__
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    try:
        restarted = sum(1 for w, p in client.run(os.getpid).items() if pids.get(w) != p)
    except Exception:
        restarted = -1
    return {
        "seconds": seconds,
        "loss": value,
        "error": error,
        "restarted_workers": restarted,
        "peak_worker_bytes": max(peaks.values()) if peaks else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shape", help="N x C, multiples of 2048 x 4096")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    assert len(shape) == 2
    import dask
    import distributed

    logits, target = lazy(shape)  # type: ignore[arg-type]
    limit = dask.utils.parse_bytes(args.memory_limit)
    record: dict[str, Any] = {
        "shape": list(shape),
        "logits_bytes": int(logits.nbytes),
        "block": list(BLOCK),
        "workers": args.workers,
        "worker_memory_limit": limit,
    }
    with (
        distributed.LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            memory_limit=args.memory_limit,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        record["idle_worker_bytes"] = max(client.run(_rss).values())
        record["crossent"] = _on_cluster(client, crossent.cross_entropy(logits, target))
        with generic_only():
            generic = crossent.cross_entropy(logits, target)
        record["standard_only"] = _on_cluster(client, generic)
    started = time.perf_counter()
    record["numpy"] = {"seconds": None, "loss": numpy_slabs(shape)}  # type: ignore[arg-type]
    record["numpy"]["seconds"] = time.perf_counter() - started
    for side in ("crossent", "standard_only", "numpy"):
        result = record[side]
        result["gb_per_second"] = logits.nbytes / 1e9 / result["seconds"]
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
