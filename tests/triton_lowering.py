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


def _source(fn: Any, types: dict[str, str], constexprs: dict[str, Any], aligned: tuple[str, ...]):
    """The ``ASTSource`` of a launch: each argument's type (``types`` by name, ``constexpr``
    for the specialization's and for pointers left None), and the divisibility by 16 that a
    launch with torch's tensors (16-byte aligned) and the ``aligned`` integers finds, without
    which Triton neither vectorizes nor pipelines the loads (and reports less shared memory)."""
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    signature = {}
    for name in fn.arg_names:
        if name in constexprs or types.get(name) is None:
            signature[name] = "constexpr"
            constexprs.setdefault(name, None)
        else:
            signature[name] = types[name]
    divisible = [i for i, name in enumerate(fn.arg_names) if signature[name].startswith("*")]
    divisible += [fn.arg_names.index(name) for name in aligned]
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)


#: What a family yields: a name, the kernel, its arguments' types (None: a pointer passed as
#: None), the constexprs, the launch options and the integers a launch finds divisible by 16.
Launch = tuple[str, Any, dict[str, Any], dict[str, Any], dict[str, int], tuple[str, ...]]


def cross_entropy() -> Iterator[Launch]:
    from crossent._backends._torch._triton import _cross_entropy as k

    for dtype, flags in itertools.product(
        DTYPES.values(), _flags(("BACKWARD",), ("HAS_WEIGHT", "HAS_SOFTCAP", "SMOOTHING"))
    ):
        types = {
            "logits_ptr": f"*{dtype}",
            "out_ptr": f"*{dtype}" if flags["BACKWARD"] else "*fp32",
            "target_ptr": "*i64",
            "weight_ptr": "*fp32" if flags["HAS_WEIGHT"] else None,
            "total_ptr": "*fp32" if flags["HAS_WEIGHT"] and flags["SMOOTHING"] else None,
            "stats_ptr": "*fp32",
            "grad_loss_ptr": "*fp32" if flags["BACKWARD"] else None,
            "row_stride": "i64",
            "out_stride": "i64",
            "n_cols": "i32",
            "ignore_index": "i64",
            "smoothing": "fp32",
            "softcap": "fp32",
            "z_loss": "fp32",
        }
        constexprs = {**flags, "BLOCK": k.MAX_BLOCK}
        yield f"cross_entropy {dtype} {flags}", k._rows, types, constexprs, {}, ()


def binary() -> Iterator[Launch]:
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
            "w_ptr": "*fp32" if flags["HAS_WEIGHT"] else None,
            "q_ptr": "*fp32" if flags["HAS_POS_WEIGHT"] else None,
            "up_ptr": "*fp32" if flags["BACKWARD"] else None,
            "out_ptr": "*fp32" if forward_sum else f"*{dtype}",
            "n_rows": "i64",
            "n_cols": "i64",
            "col_blocks": "i64",
            **dict.fromkeys(strides, "i64"),
        }
        constexprs = {**flags, "BLOCK_R": block_r, "BLOCK_C": block_c}
        yield f"binary {dtype} {flags}", k._elements, types, constexprs, {}, ()


def linear() -> Iterator[Launch]:
    """Both kernels at the GPU's block sizes (both of ``plan``'s row blocks, at the shape of
    Llama 3's head), bfloat16 (float16's code is the same) and float32, the options off and all
    on, the backward with all the gradients (the most shared memory: one alone takes less)."""
    import torch

    from crossent._backends._torch._triton import _linear, _linear_backward
    from crossent._generic._tiles import GROUP, tile_plan

    options = ("HAS_BIAS", "HAS_WEIGHT", "HAS_SOFTCAP", "SMOOTHING")
    for dtype, rows, on in itertools.product(
        (torch.bfloat16, torch.float32), (64, 1024), (False, True)
    ):
        plan = tile_plan(rows, 128256, float32=dtype == torch.float32, interpret=False)
        flags = dict.fromkeys(options, on)
        want = {"WANT_H": True, "WANT_W": True, "WANT_B": on}
        launches = [
            (_linear._forward, plan.forward, flags),
            (_linear_backward._backward, plan.backward, {**flags, **want}),
        ]
        for fn, blocks, flagged in launches:
            constexprs = {
                **flagged, "UPCAST": False, "GROUP": GROUP,
                "BLOCK_N": blocks.rows, "BLOCK_V": blocks.classes, "BLOCK_D": blocks.depth,
            }  # fmt: skip
            types = _linear_types(fn, dtype, flagged)
            launch = {"num_warps": blocks.warps, "num_stages": blocks.stages}
            name = f"linear {fn.__name__} {str(dtype)[6:]} BLOCK_N={blocks.rows} {flagged}"
            yield name, fn, types, constexprs, launch, ("h_stride", "w_stride", "dim")


def _linear_types(fn: Any, dtype: Any, flags: dict[str, bool]) -> dict[str, Any]:
    """Pointers of ``dtype`` for hidden, weight and bias, int64 for the target, float32 for
    the rest (None where the flags leave them None); float32 and int32 scalars."""
    off = {
        "b_ptr": not flags["HAS_BIAS"],
        "weight_ptr": not flags["HAS_WEIGHT"],
        "total_ptr": not (flags["HAS_WEIGHT"] and flags["SMOOTHING"]),
        "dh_ptr": not flags.get("WANT_H", False),
        "dw_ptr": not flags.get("WANT_W", False),
        "db_ptr": not flags.get("WANT_B", False),
    }
    typed = "*" + DTYPES[str(dtype).removeprefix("torch.")]
    types: dict[str, Any] = {}
    for name in fn.arg_names:
        if off.get(name, False):
            types[name] = None
        elif name in ("h_ptr", "w_ptr", "b_ptr"):
            types[name] = typed
        elif name.endswith("_ptr"):
            types[name] = "*i64" if name == "target_ptr" else "*fp32"
        elif name in ("smoothing", "softcap", "z_loss"):
            types[name] = "fp32"
        else:
            types[name] = "i32"
    return types


FAMILIES = [cross_entropy, binary, linear]


def main(archs: list[int]) -> int:
    import triton
    from triton.backends.compiler import GPUTarget

    failures = 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for family in FAMILIES:
            for name, fn, types, constexprs, options, aligned in family():
                source = _source(fn, types, constexprs, aligned)
                try:
                    compiled = triton.compile(source, target=target, options=options)
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
