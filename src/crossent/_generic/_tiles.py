"""The tiles of the fused linear cross-entropy's GPU kernels (torch's Triton ones and JAX's
Pallas ones, which share a design): blocks of rows, classes and features, and the runs the
forward splits the vocabulary into. Plain integers, so that both kernel families read one plan.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["GROUP", "PROGRAMS_PER_PROCESSOR", "Blocks", "Plan", "tile_plan"]

#: Programs the forward's grid aims at per multiprocessor, and row blocks per group of the
#: launch order (programs of a group share their blocks of the weight in L2).
PROGRAMS_PER_PROCESSOR = 4
GROUP = 8


class Blocks(NamedTuple):
    """One kernel's tile and launch: ``BLOCK_N``, ``BLOCK_V``, ``BLOCK_D``, warps, stages."""

    rows: int
    classes: int
    depth: int
    warps: int
    stages: int


class Plan(NamedTuple):
    forward: Blocks
    #: Runs of vocabulary blocks per block of rows in the forward, and blocks per run.
    splits: int
    blocks_per_split: int
    backward: Blocks


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def tile_plan(
    rows: int, classes: int, *, float32: bool, interpret: bool, processors: int = 132
) -> Plan:
    """Block sizes and the forward's splits. On a GPU, 128 x 128 tiles of logits (64 rows for
    few), ``BLOCK_D`` 64 (32 in float32, whose operands take twice the shared memory), 8 warps,
    3 stages forward and 2 backward, and enough runs of the vocabulary for
    ``PROGRAMS_PER_PROCESSOR`` programs on each of ``processors`` (at most one run per
    vocabulary block, and none empty). Under an interpreter, 16s and runs of two blocks, so
    that small tests go through both the in-run and the cross-run rescaling."""
    if interpret:
        forward = backward = Blocks(16, 16, 16, 1, 1)
        per_split = 2
    else:
        n = 64 if rows <= 64 else 128
        depth = 32 if float32 else 64
        forward, backward = Blocks(n, 128, depth, 8, 3), Blocks(n, 128, depth, 8, 2)
        splits = _cdiv(PROGRAMS_PER_PROCESSOR * processors, _cdiv(rows, n))
        per_split = _cdiv(_cdiv(classes, forward.classes), splits)
    per_split = max(per_split, 1)
    splits = max(_cdiv(_cdiv(classes, forward.classes), per_split), 1)
    return Plan(forward, splits, per_split, backward)
