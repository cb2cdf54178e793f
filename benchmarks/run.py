"""Run the benchmark suite: ``nox -s bench`` (or ``python benchmarks/run.py --help``).

Prints a progress line per comparison and a table at the end, writes every figure to
``benchmarks/results.json`` and draws ``docs/_static/benchmarks.png``, which the docs'
benchmark page shows. Ratios are ``time(crossent) / time(peer)``: below 1 means crossent wins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import suites  # noqa: E402

RESULTS = HERE / "results.json"
PLOT = ROOT / "docs" / "_static" / "benchmarks.png"

#: The targets of the performance issue, for the headline shape: (suite, name) -> ratio.
TARGETS = {
    ("numpy", "forward vs from scratch"): 0.4,
    ("numpy", "forward vs SciPy"): 0.6,
    ("numpy", "forward vs torch"): 0.8,
    ("numpy", "value_and_grad vs torch forward+backward"): 1.0,
    ("torch", "cross_entropy forward"): 1.05,
    ("torch", "cross_entropy forward+backward"): 1.05,
    ("torch", "nll_loss forward"): 1.05,
    ("torch", "nll_loss forward+backward"): 1.05,
    ("torch", "binary_cross_entropy_with_logits forward"): 1.05,
    ("torch", "binary_cross_entropy_with_logits forward+backward"): 1.05,
    ("jax", "cross_entropy forward (jit)"): 1.05,
    ("jax", "cross_entropy value_and_grad (jit)"): 1.05,
    ("jax", "binary_cross_entropy_with_logits forward (jit)"): 1.05,
    ("jax", "binary_cross_entropy_with_logits value_and_grad (jit)"): 1.05,
}

#: Targets at every shape of the run: (suite, name, dtype) -> ratio.
EVERY_SHAPE = {
    ("numpy", "class probabilities vs from scratch", "float32"): 0.6,
    ("numpy", "(N, C, 16) axis=1 vs from scratch", "float32"): 0.6,
    ("torch", "cross_entropy forward", "bfloat16"): 1.5,
    ("torch", "cross_entropy forward+backward", "bfloat16"): 1.5,
    ("torch", "nll_loss forward", "bfloat16"): 1.2,
    ("torch", "nll_loss forward+backward", "bfloat16"): 1.2,
    ("torch", "binary_cross_entropy_with_logits forward", "bfloat16"): 1.5,
    ("torch", "binary_cross_entropy_with_logits forward+backward", "bfloat16"): 1.5,
    ("jax", "cross_entropy jax.value_and_grad (jit)", "float32"): 1.05,
    ("jax", "binary_cross_entropy_with_logits jax.value_and_grad (jit)", "float32"): 1.05,
    **{
        ("jax", f"{name} {kind} (jit)", "bfloat16"): 1.1
        for name in ("cross_entropy", "binary_cross_entropy_with_logits")
        for kind in ("forward", "value_and_grad", "jax.value_and_grad")
    },
}


#: The linear suite's targets at each of its shapes: time ratio against the dense computation.
LINEAR_TARGETS = {
    "torch forward+backward vs dense": 1.25,
    "JAX jax.value_and_grad (jit) vs optax dense": 1.25,
}
#: Extra memory of linear_cross_entropy at most this share of the dense logits' bytes.
LINEAR_MEMORY_SHARE = 1 / 16


def target_of(r: harness.Comparison) -> float | None:
    """The ratio ``r`` should stay under, if any."""
    if r.suite == "linear":
        return LINEAR_TARGETS.get(r.name)
    every = EVERY_SHAPE.get((r.suite, r.name, r.dtype))
    if every is not None:
        return every
    if tuple(r.shape) == suites.HEADLINE and r.dtype == "float32":
        return TARGETS.get((r.suite, r.name))
    return None


def _shape(text: str) -> tuple[int, int]:
    rows, columns = text.lower().split("x")
    return int(rows), int(columns)


def _linear_shape(text: str) -> tuple[int, int, int]:
    n, d, v = text.lower().split("x")
    return int(n), int(d), int(v)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _versions() -> dict[str, str]:
    out = {}
    for name in ("crossent", "numpy", "scipy", "scikit-learn", "torch", "jax", "optax",
                 "transformers"):  # fmt: skip
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _cases(args: argparse.Namespace) -> list[tuple[tuple[int, int], str, Any]]:
    """(shape, dtype, generator of cases) in the order they run."""
    planned = []
    for shape in args.shapes:
        if "numpy" in args.suites:
            planned.append((shape, "float32", lambda s=shape: suites.numpy_suite(s)))
        if "torch" in args.suites:
            for dtype in ("float32", "bfloat16"):
                planned.append((shape, dtype, lambda s=shape, d=dtype: suites.torch_suite(s, d)))
        if "jax" in args.suites:
            for dtype in ("float32", "bfloat16"):
                planned.append((shape, dtype, lambda s=shape, d=dtype: suites.jax_suite(s, d)))
    if "linear" in args.suites:
        for shape in args.linear_shapes:
            planned.append((shape, "float32", lambda s=shape: suites.linear_suite(s)))
            for dtype in ("float32", "bfloat16"):
                planned.append(
                    (shape, dtype, lambda s=shape, d=dtype: suites.torch_linear_suite(s, d))
                )
    if "transformers" in args.suites:
        shape = (*suites.LLAMA_BATCH, suites.LLAMA["vocab_size"])
        planned.append((shape, "float32", suites.transformers_suite))
    return planned


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.1f}"


def run(args: argparse.Namespace) -> list[harness.Comparison]:
    results = []
    planned = _cases(args)
    started = time.perf_counter()
    for shape, dtype, make in planned:
        for case in make():
            pairs = args.pairs
            own_memory = case.memory is not None and not args.no_memory
            ratio, ours_s, peer_s, ours_peak, peer_peak = harness.compare(
                case.run_ours,
                case.run_peer,
                pairs=pairs,
                memory=not args.no_memory and not own_memory,
            )
            if own_memory:
                assert case.memory is not None
                ours_peak, peer_peak = case.memory()
            result = harness.Comparison(
                suite=case.suite,
                name=case.name,
                shape=shape,
                dtype=dtype,
                ours=case.ours,
                peer=case.peer,
                ratio=ratio,
                ours_seconds=ours_s,
                peer_seconds=peer_s,
                ours_peak_bytes=ours_peak,
                peer_peak_bytes=peer_peak,
                input_bytes=case.input_bytes,
                output_bytes=case.output_bytes,
                pairs=pairs,
                reference_bytes=case.reference_bytes,
            )
            results.append(result)
            elapsed = time.perf_counter() - started
            print(
                f"[{elapsed:6.0f} s] {case.suite:<6} {_shape_text(shape):>18} {dtype:<8} "
                f"{case.name:<52} ratio {ratio:5.2f}  ({ours_s * 1e3:8.2f} ms vs "
                f"{peer_s * 1e3:8.2f} ms)",
                flush=True,
            )
    return results


def table(results: list[harness.Comparison]) -> str:
    lines = [
        f"{'suite':<7}{'shape':<19}{'dtype':<9}{'comparison':<53}{'ratio':>6}{'target':>8}"
        f"{'ours ms':>10}{'peer ms':>10}{'ours MiB':>10}{'peer MiB':>10}",
    ]
    for r in results:
        target = target_of(r)
        shown = "" if target is None else f"{target:.2f}" + ("" if r.ratio <= target else "!")
        lines.append(
            f"{r.suite:<7}{_shape_text(r.shape):<19}{r.dtype:<9}{r.name:<53}"
            f"{r.ratio:6.2f}{shown:>8}{r.ours_seconds * 1e3:10.2f}{r.peer_seconds * 1e3:10.2f}"
            f"{_mib(r.ours_peak_bytes):>10}{_mib(r.peer_peak_bytes):>10}"
        )
    shares = [r for r in results if r.reference_bytes]
    if shares:
        lines += ["", f"extra memory / the dense logits' bytes (target {LINEAR_MEMORY_SHARE:g}):"]
        for r in shares:
            ours = (
                "—"
                if r.ours_peak_bytes is None
                else f"{r.ours_peak_bytes / r.reference_bytes:.4f}"
            )
            peer = (
                "—"
                if r.peer_peak_bytes is None
                else f"{r.peer_peak_bytes / r.reference_bytes:.3f}"
            )
            lines.append(
                f"  {_shape_text(r.shape):<19}{r.name:<53} crossent {ours:>7}  dense {peer:>6}"
                f"  (logits {r.reference_bytes / 2**20:,.0f} MiB)"
            )
    return "\n".join(lines)


_TICKS = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 0.5, 0.8, 0.9, 1.0, 1.1, 1.25, 2, 4, 8, 16, 32]
# (the powers of 2 among them serve wide ranges; 0.8 to 1.25 narrow ones)


def plot(results: list[harness.Comparison], machine: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    families = [
        s for s in ("numpy", "torch", "jax", "linear") if any(r.suite == s for r in results)
    ]
    fig, axes = plt.subplots(
        len(families), 1, figsize=(10, 3.2 * len(families)), squeeze=False, layout="constrained"
    )
    for ax, family in zip(axes[:, 0], families, strict=True):
        rows = [r for r in results if r.suite == family]
        names = list(dict.fromkeys(f"{r.name} [{r.dtype}]" for r in rows))
        shapes = list(dict.fromkeys(tuple(r.shape) for r in rows))
        offset = 0.7 / max(1, len(shapes))
        low, high = 1.0, 1.0
        for k, shape in enumerate(shapes):
            values = []
            for name in names:
                match = [
                    r for r in rows if f"{r.name} [{r.dtype}]" == name and tuple(r.shape) == shape
                ]
                values.append(match[0].ratio if match else float("nan"))
            positions = [i + (k - (len(shapes) - 1) / 2) * offset for i in range(len(names))]
            color = f"C{k}"
            # a lollipop from parity: on a log axis its length is the factor
            ax.hlines(positions, 1.0, values, color=color, linewidth=2)
            ax.plot(
                values,
                positions,
                "o",
                color=color,
                markersize=4,
                label=" x ".join(str(s) for s in shape),
            )
            finite = [v for v in values if v == v]
            low, high = min(low, *finite), max(high, *finite)
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_xscale("log")  # ratios are multiplicative: 0.5 and 2 are as far from 1
        steps = _TICKS if high / low < 4 else [t for t in _TICKS if math.log2(t).is_integer()]
        ticks = [t for t in steps if low / 1.2 <= t <= high * 1.2]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlim(low / 1.2, high * 1.2)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(
            f"{family}: time(crossent) / time(peer), median of interleaved pairs", fontsize=9
        )
        ax.legend(
            fontsize=7,
            title="(N, D, V)" if family == "linear" else "(N, C)",
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    fig.suptitle(
        f"{machine['cpu']}, {machine['cores']} cores, {machine['date']}: below 1, crossent wins",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dask_cluster(shape: str) -> dict[str, Any]:
    """``benchmarks/dask_cluster.py`` in a process of its own (its cluster's workers are
    processes too): throughput and memory per worker, printed and returned."""
    import subprocess

    script = HERE / "dask_cluster.py"
    command = [sys.executable, str(script), shape, "--workers", "2", "--memory-limit", "1GiB"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    limit = record["worker_memory_limit"]
    print(f"\nDask, {record['workers']} workers of {_mib(limit)} MiB, {shape} float32 logits:")
    for side in ("crossent", "standard_only", "numpy"):
        result = record[side]
        peak = result.get("peak_worker_bytes")
        memory = "" if peak is None else f", peak worker {_mib(peak)} MiB"
        failed = f" ({result['error']})" if result.get("error") else ""
        print(f"  {side:<14} {result['gb_per_second']:5.2f} GB/s{memory}{failed}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--shapes",
        type=_shape,
        nargs="+",
        default=suites.SHAPES,
        help="N x C shapes, e.g. 16384x1000",
    )
    parser.add_argument(
        "--linear-shapes",
        type=_linear_shape,
        nargs="+",
        default=suites.LINEAR_SHAPES,
        help="N x D x V shapes of the linear suite, e.g. 4096x512x32000",
    )
    parser.add_argument(
        "--suites",
        nargs="+",
        default=["numpy", "torch", "jax", "linear", "transformers", "dask"],
        choices=["numpy", "torch", "jax", "linear", "transformers", "dask"],
    )
    parser.add_argument(
        "--dask-shape",
        default="32768x32768",
        help="N x C of the Dask cluster's float32 logits (multiples of 2048 x 4096)",
    )
    parser.add_argument("--pairs", type=int, default=11, help="interleaved pairs per case")
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="measure nothing: redraw the plot from --output's results",
    )
    args = parser.parse_args(argv)

    if args.plot_only:
        saved = json.loads(args.output.read_text())
        results = [
            harness.Comparison(**{**r, "shape": tuple(r["shape"])}) for r in saved["results"]
        ]
        plot(results, saved["machine"], args.plot)
        print(table(results))
        return 0

    machine = harness.machine()
    print(f"crossent benchmarks on {machine['cpu']}, {machine['cores']} cores")
    results = run(args)
    print()
    print(table(results))
    cluster = dask_cluster(args.dask_shape) if "dask" in args.suites else None
    payload = {
        "machine": machine,
        "versions": _versions(),
        "targets": [
            {"suite": s, "name": n, "shape": list(suites.HEADLINE), "ratio": v}
            for (s, n), v in TARGETS.items()
        ]
        + [
            {"suite": s, "name": n, "dtype": d, "shape": "every", "ratio": v}
            for (s, n, d), v in EVERY_SHAPE.items()
        ]
        + [
            {"suite": "linear", "name": n, "shape": "every", "ratio": v}
            for n, v in LINEAR_TARGETS.items()
        ],
        "linear_memory_share": LINEAR_MEMORY_SHARE,
        "results": [r.as_dict() for r in results],
        "dask_cluster": cluster,
    }
    args.output.write_text(json.dumps(payload, indent=1) + "\n")
    plot(results, machine, args.plot)
    print(f"\nwrote {args.output} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
