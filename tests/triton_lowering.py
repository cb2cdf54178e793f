"""Compile every Triton kernel of crossent for a GPU, on a machine with none: ``python
tests/triton_lowering.py [ARCH ...]`` (default 90, an H100 or H200; 80 is an A100).

Triton's interpreter runs the kernels' Python, not their lowering: a ``tl.dot`` of blocks too
small, a type a loop changes, shared memory beyond the chip's are errors only the compiler
finds. Triton compiles to a cubin for any target without the device (its ``ptxas`` ships in the
wheel), so this runs each kernel's specializations, at the block sizes the launches use,
through the whole pipeline, and prints the shared memory each takes. It must run without
``TRITON_INTERPRET`` in the environment (the test in ``test_triton.py`` starts it so).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from typing import Any

#: The most shared memory one program may take on the targets: 227 KiB on sm_90, 163 on sm_80.
SHARED_LIMIT = {90: 232448, 80: 166912}
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _flags(modes: tuple[str, ...], options: tuple[str, ...]) -> Iterator[dict[str, bool]]:
    """Every combination of the ``modes``, each with every option off and every option on (the
    options' code is independent of one another's)."""
    for values in itertools.product((False, True), repeat=len(modes)):
        for on in (False, True):
            yield {**dict(zip(modes, values, strict=True)), **dict.fromkeys(options, on)}


def _signature(fn: Any, types: dict[str, str], constexprs: dict[str, Any]) -> dict[str, str]:
    """Each argument's type: ``types`` by name, ``constexpr`` for the specialization's."""
    out = {}
    for name in fn.arg_names:
        out[name] = "constexpr" if name in constexprs else types[name]
    return out


def cross_entropy() -> Iterator[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    from crossent._backends._torch._triton import _cross_entropy as k

    for dtype, flags in itertools.product(
        DTYPES.values(), _flags(("BACKWARD",), ("HAS_WEIGHT", "HAS_SOFTCAP", "SMOOTHING"))
    ):
        types = {
            "logits_ptr": f"*{dtype}",
            "out_ptr": f"*{dtype}" if flags["BACKWARD"] else "*fp32",
            "target_ptr": "*i64",
            "weight_ptr": "*fp32",
            "total_ptr": "*fp32",
            "stats_ptr": "*fp32",
            "grad_loss_ptr": "*fp32",
            "row_stride": "i64",
            "out_stride": "i64",
            "n_cols": "i32",
            "ignore_index": "i64",
            "smoothing": "fp32",
            "softcap": "fp32",
            "z_loss": "fp32",
        }
        constexprs = {**flags, "BLOCK": k.MAX_BLOCK}
        yield f"cross_entropy {dtype} {flags}", k._rows, types, constexprs


def binary() -> Iterator[tuple[str, Any, dict[str, str], dict[str, Any]]]:
    from crossent._backends._torch._triton import _binary as k

    strides = ["x_rs", "x_cs", "t_rs", "t_cs", "w_rs", "w_cs", "q_rs", "q_cs", "up_rs", "up_cs"]
    block_r, block_c = k._blocks(10**6)
    for dtype, flags in itertools.product(
        DTYPES.values(), _flags(("SUM", "BACKWARD"), ("HAS_WEIGHT", "HAS_POS_WEIGHT"))
    ):
        forward_sum = flags["SUM"] and not flags["BACKWARD"]
        types = {
            "x_ptr": f"*{dtype}",
            "t_ptr": f"*{dtype}",
            "w_ptr": "*fp32",
            "q_ptr": "*fp32",
            "up_ptr": "*fp32",
            "out_ptr": "*fp32" if forward_sum else f"*{dtype}",
            "n_rows": "i64",
            "n_cols": "i64",
            "col_blocks": "i64",
            **dict.fromkeys(strides, "i64"),
        }
        constexprs = {**flags, "BLOCK_R": block_r, "BLOCK_C": block_c}
        yield f"binary {dtype} {flags}", k._elements, types, constexprs


FAMILIES = [cross_entropy, binary]


def main(archs: list[int]) -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for family in FAMILIES:
            for name, fn, types, constexprs in family():
                source = ASTSource(
                    fn=fn, signature=_signature(fn, types, constexprs), constexprs=constexprs
                )
                try:
                    compiled = triton.compile(source, target=target)
                except Exception as error:  # each failure is reported
                    failures += 1
                    print(f"sm_{arch} {name}: FAILED {type(error).__name__}: {error}")
                    continue
                shared = compiled.metadata.shared
                over = shared > SHARED_LIMIT[arch]
                failures += over
                print(f"sm_{arch} {name}: shared {shared} B{' OVER THE LIMIT' if over else ''}")
    print(f"{failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [90]))
