"""Column currents of two-level inputs by table lookup.

When every row voltage of an array is one of two values, +-v (the DAC's image of a centred sign:
the inputs of the binarized layers), a group of ``b`` rows can only see ``2^b`` voltage
patterns. The column currents of each pattern are tabulated once per read, ``(rows / b) * 2^b``
table rows, and the currents of an input are the sum of one table row per group: ``rows / b``
vector additions per input instead of ``rows`` multiply-adds (PyTorch's ``embedding_bag`` in
sum mode). These are the same currents added in another order: equal to the matrix product up
to float32 rounding (``tests/test_crossbar_lookup.py``).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor
from torch.nn import functional as F

#: rows per lookup group: a 2^4-row table per group (for 128 columns, 8 KB of float32 per
#: group, a 128-row tile's 32 groups in 256 KB: an L2 cache)
GROUP_BITS = 4


def two_level(v: Tensor, level: float) -> bool:
    """Whether every entry of ``v`` is ``+level`` or ``-level`` (one pass over ``v``)."""
    return v.numel() > 0 and bool(v.abs().eq_(level).all())


def pattern_codes(v: Tensor, level: float, bits: int = GROUP_BITS) -> Tensor:
    """The voltage pattern of each group of ``bits`` consecutive entries of the last dim of
    ``v`` (..., C), entries +-``level``, C a multiple of ``bits``: int32 (..., C / bits), group j's
    code ``j * 2^bits + sum_r [v_r > 0] 2^(bits - 1 - r)``, its row in :func:`pattern_table`."""
    *lead, c = v.shape
    if c % bits:
        raise ValueError(f"{c} entries do not split into groups of {bits}")
    weights = torch.tensor([2.0 ** (bits - 1 - r) / (2.0 * level) for r in range(bits)], dtype=v.dtype, device=v.device)
    groups = c // bits
    offsets = torch.arange(groups, dtype=v.dtype, device=v.device) * 2.0 ** bits + (2.0 ** bits - 1) / 2.0
    # sum_r (v_r / level + 1) / 2 * 2^(bits-1-r): integers up to 2^bits - 1, exact in float32
    return torch.matmul(v.reshape(*lead, groups, bits), weights).add_(offsets).round_().to(torch.int32)


def pattern_table(g: Tensor, level: float, bits: int = GROUP_BITS) -> Tensor:
    """The currents (..., R / bits * 2^bits, N) of every voltage pattern of each group of ``bits``
    rows of ``g`` (..., R, N): row ``j * 2^bits + code`` holds ``sum_r level * s_r * g[j bits + r]``
    with ``s_r = +1`` where bit ``bits - 1 - r`` of ``code`` is set, else ``-1``."""
    *lead, r, n = g.shape
    if r % bits:
        raise ValueError(f"{r} rows do not split into groups of {bits}")
    patterns = torch.tensor(list(itertools.product((-level, level), repeat=bits)), dtype=g.dtype, device=g.device)
    grouped = g.reshape(*lead, r // bits, bits, n)
    return torch.matmul(patterns, grouped).reshape(*lead, (r // bits) << bits, n)


def lookup_currents(codes: Tensor, table: Tensor) -> Tensor:
    """Currents (M, N) of ``M`` inputs given their group codes (M, G) (:func:`pattern_codes`)
    and the array's :func:`pattern_table` (T, N): the sum of one table row per group."""
    return F.embedding_bag(codes, table, mode="sum")
