"""crossent against the peer a user would pick, on one CUDA GPU: torch, JAX and CuPy.

``python benchmarks/gpu.py --output benchmarks/results-cuda.json`` on a machine with an
NVIDIA GPU and CUDA builds of the frameworks (each part runs where its framework sees the GPU,
and says why not where it does not). Ratios are ``time(crossent) / time(peer)`` over
interleaved pairs, as in ``run.py``: below 1 means crossent wins. Peak memory is the device
allocator's high-water mark beyond the inputs (torch), or XLA's temporaries of the compiled
program (JAX). No CI machine has a GPU: the figures come from a lent machine and are quoted in
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import crossent  # noqa: E402

#: (N, C) of the dense cases: a classifier-sized and a language-model-sized vocabulary.
SHAPES = [(8192, 32000), (4096, 128256)]
#: (N, D, V) of the linear cases: a Llama-3-sized vocabulary.
LINEAR_SHAPE = (8192, 4096, 128256)
#: ``--smoke``: tiny shapes on the CPU, to check the script where there is no GPU
SMOKE = False
#: a sample lasts at least this long: short calls repeat inside it
MIN_SAMPLE_SECONDS = 0.01


def _measure(func: Callable[[], Any], sync: Callable[[Any], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = func()
    sync(out)
    return (time.perf_counter() - start) / calls


def compare(
    ours: Callable[[], Any], peer: Callable[[], Any], sync: Callable[[Any], None], pairs: int
) -> dict[str, float]:
    """Median seconds of each side and the median ratio over interleaved pairs."""
    for f in (ours, peer):  # compile, warm the allocator
        for _ in range(2):
            sync(f())
    single = min(_measure(ours, sync, 1), _measure(peer, sync, 1))
    calls = max(1, math.ceil(MIN_SAMPLE_SECONDS / max(single, 1e-9)))
    a, b = [], []
    for i in range(pairs):
        order = (ours, peer) if i % 2 == 0 else (peer, ours)
        times = {id(f): _measure(f, sync, calls) for f in order}
        a.append(times[id(ours)])
        b.append(times[id(peer)])
    return {
        "ratio": statistics.median(x / y for x, y in zip(a, b, strict=True)),
        "ours_seconds": statistics.median(a),
        "peer_seconds": statistics.median(b),
    }


def _torch_cases(pairs: int) -> Iterator[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    if SMOKE:
        dev = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    else:
        dev = torch.device("cuda")

    def sync(_: Any) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def peak(func: Callable[[], Any]) -> int | None:
        if dev.type != "cuda":
            return None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = func()
        torch.cuda.synchronize()
        grown = torch.cuda.max_memory_allocated() - base
        del out
        return int(grown)

    gen = torch.Generator(device=dev).manual_seed(0)
    for n, c in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(n, c, device=dev, generator=gen).mul_(3).to(dtype)
            t = torch.randint(0, c, (n,), device=dev, generator=gen)
            leaf = x.clone().requires_grad_(True)

            def step(loss_of: Callable[..., Any], leaf: Any = leaf, t: Any = t) -> Any:
                leaf.grad = None
                loss = loss_of(leaf, t)
                loss.backward()
                return loss

            name = str(dtype).removeprefix("torch.")
            rows = [
                (
                    "cross_entropy forward",
                    lambda x=x, t=t: crossent.cross_entropy(x, t),
                    lambda x=x, t=t: F.cross_entropy(x, t),
                    "F.cross_entropy",
                ),
                (
                    "cross_entropy forward+backward",
                    lambda s=step: s(crossent.cross_entropy),
                    lambda s=step: s(F.cross_entropy),
                    "F.cross_entropy",
                ),
                (
                    "cross_entropy label_smoothing=0.1 forward+backward",
                    lambda s=step: s(
                        lambda a, b: crossent.cross_entropy(a, b, label_smoothing=0.1)
                    ),
                    lambda s=step: s(lambda a, b: F.cross_entropy(a, b, label_smoothing=0.1)),
                    "F.cross_entropy",
                ),
            ]
            if c == SHAPES[0][1]:
                y = (torch.rand(n, c, device=dev, generator=gen) < 0.5).to(dtype)
                rows.append(
                    (
                        "binary_cross_entropy_with_logits forward+backward",
                        lambda s=step, y=y: s(
                            lambda a, _: crossent.binary_cross_entropy_with_logits(a, y)
                        ),
                        lambda s=step, y=y: s(
                            lambda a, _: F.binary_cross_entropy_with_logits(a, y)
                        ),
                        "F.binary_cross_entropy_with_logits",
                    )
                )
            rows += _liger_rows(x, t, step)
            for label, ours, theirs, peer in rows:
                try:
                    record = compare(ours, theirs, sync, pairs)
                except Exception as error:  # a peer that fails here: said, not fatal
                    print(f"torch {label} vs {peer}: {error!r}", flush=True)
                    continue
                logits_bytes = x.element_size() * x.numel()
                # the least traffic: the logits read once, and their gradient written once
                moved = logits_bytes * (2 if "backward" in label else 1)
                record.update(
                    suite="torch",
                    name=label,
                    shape=[n, c],
                    dtype=name,
                    peer=peer,
                    ours_peak_bytes=peak(ours),
                    peer_peak_bytes=peak(theirs),
                    logits_bytes=logits_bytes,
                    ours_tb_per_s=moved / record["ours_seconds"] / 1e12,
                    peer_tb_per_s=moved / record["peer_seconds"] / 1e12,
                )
                yield record
            del x, leaf

    n, d, v = LINEAR_SHAPE
    for dtype in (torch.bfloat16, torch.float32):
        h = torch.randn(n, d, device=dev, generator=gen).to(dtype).requires_grad_(True)
        w = (torch.randn(v, d, device=dev, generator=gen) / d**0.5).to(dtype).requires_grad_(True)
        t = torch.randint(0, v, (n,), device=dev, generator=gen)

        def linear_step(loss_of: Callable[[], Any], h: Any = h, w: Any = w) -> Any:
            h.grad = w.grad = None
            loss = loss_of()
            loss.backward()
            return loss

        def ours(h: Any = h, w: Any = w, t: Any = t) -> Any:
            return linear_step(lambda: crossent.linear_cross_entropy(h, w, t))

        def theirs(h: Any = h, w: Any = w, t: Any = t) -> Any:
            return linear_step(lambda: F.cross_entropy(F.linear(h, w).float(), t))

        peers = [("F.cross_entropy(F.linear(h, w).float(), t)", theirs)]
        peers += _fused_linear_peers(h, w, t, linear_step)
        for peer, their_step in peers:
            try:
                record = compare(ours, their_step, sync, max(3, pairs // 2))
            except Exception as error:  # a peer that fails here: said, not fatal
                print(f"torch linear vs {peer}: {error!r}", flush=True)
                continue
            flop = 6 * n * d * v  # the logits' product, and the two of the backward
            record.update(
                suite="torch",
                name="linear_cross_entropy forward+backward",
                shape=[n, d, v],
                dtype=str(dtype).removeprefix("torch."),
                peer=peer,
                ours_peak_bytes=peak(ours),
                peer_peak_bytes=peak(their_step),
                logits_bytes=n * v * h.element_size(),
                ours_tflop_per_s=flop / record["ours_seconds"] / 1e12,
                peer_tflop_per_s=flop / record["peer_seconds"] / 1e12,
            )
            yield record
        del h, w


def _liger_rows(x: Any, t: Any, step: Callable[..., Any]) -> list[tuple[Any, ...]]:
    """Liger-Kernel's Triton cross-entropy as a second peer, where it is installed. It writes
    the gradient into its input's storage: it gets a leaf of its own."""
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError as error:
        print(f"Liger-Kernel not compared: {error}", flush=True)
        return []
    import crossent as ce

    liger = LigerCrossEntropyLoss()
    own = x.clone().requires_grad_(True)

    def theirs(own: Any = own) -> Any:
        return step(lambda a, b: liger(a, b), leaf=own)

    return [
        (
            "cross_entropy forward+backward",
            lambda: step(ce.cross_entropy),
            theirs,
            "Liger-Kernel LigerCrossEntropyLoss",
        )
    ]


def _fused_linear_peers(
    h: Any, w: Any, t: Any, linear_step: Callable[..., Any]
) -> list[tuple[str, Callable[[], Any]]]:
    """Liger-Kernel's and Cut Cross-Entropy's fused linear cross-entropy, where installed."""
    peers: list[tuple[str, Callable[[], Any]]] = []
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        fused = LigerFusedLinearCrossEntropyLoss()
        peers.append(
            (
                "Liger-Kernel LigerFusedLinearCrossEntropyLoss",
                lambda: linear_step(lambda: fused(w, h, t)),
            )
        )
    except ImportError as error:
        print(f"Liger-Kernel not compared: {error}", flush=True)
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        peers.append(
            ("Cut Cross-Entropy linear_cross_entropy", lambda: linear_step(lambda: cce(h, w, t)))
        )
    except ImportError as error:
        print(f"Cut Cross-Entropy not compared: {error}", flush=True)
    return peers


def _jax_cases(pairs: int) -> Iterator[dict[str, Any]]:
    import jax
    import jax.numpy as jnp
    import optax

    if jax.default_backend() != "gpu" and not SMOKE:
        raise RuntimeError(f"JAX's default backend is {jax.default_backend()}, not gpu")

    def sync(out: Any) -> None:
        jax.block_until_ready(out)

    def temporaries(f: Any, *args: Any) -> int | None:
        analysis = f.lower(*args).compile().memory_analysis()
        return None if analysis is None else int(analysis.temp_size_in_bytes)

    key = jax.random.key(0)
    for n, c in SHAPES:
        for dtype in (jnp.float32, jnp.bfloat16):
            x = (3 * jax.random.normal(key, (n, c), dtype=jnp.float32)).astype(dtype)
            t = jax.random.randint(key, (n,), 0, c)

            def optax_ce(a: Any, b: Any) -> Any:
                return optax.softmax_cross_entropy_with_integer_labels(a, b).mean()

            def ours_ce(a: Any, b: Any) -> Any:
                return crossent.cross_entropy(a, b)

            for label, ours, theirs in [
                ("cross_entropy forward (jit)", jax.jit(ours_ce), jax.jit(optax_ce)),
                (
                    "cross_entropy jax.value_and_grad (jit)",
                    jax.jit(jax.value_and_grad(ours_ce)),
                    jax.jit(jax.value_and_grad(optax_ce)),
                ),
            ]:
                record = compare(
                    lambda f=ours, x=x, t=t: f(x, t),
                    lambda f=theirs, x=x, t=t: f(x, t),
                    sync,
                    pairs,
                )
                record.update(
                    suite="jax",
                    name=label,
                    shape=[n, c],
                    dtype=jnp.dtype(dtype).name,
                    peer="optax.softmax_cross_entropy_with_integer_labels",
                    ours_peak_bytes=temporaries(ours, x, t),
                    peer_peak_bytes=temporaries(theirs, x, t),
                    logits_bytes=x.nbytes,
                )
                yield record
            del x

    n, d, v = LINEAR_SHAPE
    dtype = jnp.bfloat16
    h = jax.random.normal(key, (n, d), dtype=jnp.float32).astype(dtype)
    w = (jax.random.normal(jax.random.key(1), (v, d), dtype=jnp.float32) / d**0.5).astype(dtype)
    t = jax.random.randint(key, (n,), 0, v)

    def ours_linear(a: Any, b: Any) -> Any:
        return crossent.linear_cross_entropy(a, b, t)

    def optax_linear(a: Any, b: Any) -> Any:
        logits = (a @ b.T).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, t).mean()

    ours = jax.jit(jax.value_and_grad(ours_linear, argnums=(0, 1)))
    theirs = jax.jit(jax.value_and_grad(optax_linear, argnums=(0, 1)))
    record = compare(lambda: ours(h, w), lambda: theirs(h, w), sync, max(3, pairs // 2))
    record.update(
        suite="jax",
        name="linear_cross_entropy jax.value_and_grad (jit)",
        shape=[n, d, v],
        dtype="bfloat16",
        peer="optax.softmax_cross_entropy_with_integer_labels(h @ w.T)",
        ours_peak_bytes=temporaries(ours, h, w),
        peer_peak_bytes=temporaries(theirs, h, w),
        logits_bytes=n * v * 2,
    )
    yield record


def _cupy_cases(pairs: int) -> Iterator[dict[str, Any]]:
    import cupy as cp

    if cp.cuda.runtime.getDeviceCount() == 0:  # CuPy raises where there is no driver
        raise RuntimeError("CuPy sees no CUDA device")

    def sync(_: Any) -> None:
        cp.cuda.Device().synchronize()

    def from_scratch(x: Any, t: Any) -> Any:
        m = x.max(axis=1, keepdims=True)
        lse = cp.log(cp.exp(x - m).sum(axis=1)) + m[:, 0]
        return (lse - cp.take_along_axis(x, t[:, None], axis=1)[:, 0]).mean()

    def scratch_grad(x: Any, t: Any) -> Any:
        m = x.max(axis=1, keepdims=True)
        e = cp.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        lse = cp.log(s[:, 0]) + m[:, 0]
        loss = (lse - cp.take_along_axis(x, t[:, None], axis=1)[:, 0]).mean()
        g = e / s
        g[cp.arange(x.shape[0]), t] -= 1
        return loss, g / x.shape[0]

    rng = cp.random.default_rng(0)
    step = crossent.value_and_grad(crossent.cross_entropy)
    for n, c in SHAPES[:1]:
        x = 3 * rng.standard_normal((n, c), dtype=cp.float32)
        t = rng.integers(0, c, n)
        for label, ours, theirs in [
            ("cross_entropy forward", crossent.cross_entropy, from_scratch),
            ("cross_entropy value_and_grad", step, scratch_grad),
        ]:
            record = compare(
                lambda f=ours, x=x, t=t: f(x, t), lambda f=theirs, x=x, t=t: f(x, t), sync, pairs
            )
            record.update(
                suite="cupy",
                name=label,
                shape=[n, c],
                dtype="float32",
                peer="CuPy from scratch (max, exp, sum, log, take_along_axis)",
                logits_bytes=x.nbytes,
            )
            yield record


SUITES = {"torch": _torch_cases, "jax": _jax_cases, "cupy": _cupy_cases}


def _row(r: dict[str, Any]) -> str:
    def mib(v: Any) -> str:
        return "-" if v is None else f"{v / 2**20:,.0f}"

    shape = "x".join(map(str, r["shape"]))
    return (
        f"{r['suite']:<6} {r['name']:<52} {shape:<17} {r['dtype']:<9} "
        f"{r['ratio']:5.2f}  {r['ours_seconds'] * 1e3:8.3f} ms {r['peer_seconds'] * 1e3:8.3f} ms"
        f"  {mib(r.get('ours_peak_bytes')):>7} / {mib(r.get('peer_peak_bytes')):>7} MiB"
        + (
            f"  {r['ours_tb_per_s']:.2f} / {r['peer_tb_per_s']:.2f} TB/s"
            if "ours_tb_per_s" in r
            else ""
        )
        + (
            f"  {r['ours_tflop_per_s']:.0f} / {r['peer_tflop_per_s']:.0f} TFLOP/s"
            if "ours_tflop_per_s" in r
            else ""
        )
        + f"  vs {r['peer']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--pairs", type=int, default=11)
    parser.add_argument("--output", type=Path, default=HERE / "results-cuda.json")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes, CPU allowed: checks the script runs"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        global SMOKE, LINEAR_SHAPE
        SMOKE = True
        SHAPES[:] = [(64, 100), (32, 300)]
        LINEAR_SHAPE = (64, 32, 500)
        args.pairs = 3
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    results, errors = [], {}
    print(
        f"{'suite':<6} {'case':<52} {'shape':<17} {'dtype':<9} ratio   crossent    peer"
        "        peak MiB crossent / peer"
    )
    for name in args.suites:
        try:
            for record in SUITES[name](args.pairs):
                results.append(record)
                print(_row(record), flush=True)
        except Exception:  # one framework's failure must not hide the others' figures
            errors[name] = traceback.format_exc()
            print(f"{name}: failed\n{errors[name]}", flush=True)
    versions = {}
    for module in ("torch", "jax", "cupy", "numpy"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    device = None
    try:
        import torch

        device = torch.cuda.get_device_name(0)
    except Exception:
        pass
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "versions": versions,
        "results": results,
        "errors": errors,
    }
    args.output.write_text(json.dumps(record, indent=1) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
