"""IR drop: the currents of a passive crossbar whose lines have resistance (circuit solve).

The circuit (the same topology as MemTorch's passive solver, ``memtorch/bh/crossbar/Passive.py``)::

    driver V_i --R_s-- w(i,0) --R_w-- w(i,1) --R_w-- ... --R_w-- w(i,C-1)      word line i
                         |              |                         |
                       G_i0           G_i1                      G_i,C-1          one device per crossing
                         |              |                         |
    b(i,j) on bit line j: b(0,j) --R_w-- b(1,j) --R_w-- ... b(R-1,j) --R_s-- sink at 0 V

Word line ``i`` is driven at its column-0 end through the source resistance ``R_s``, each bit
line sinks at its last-row end through ``R_s`` into a virtual ground, and ``R_w`` is the wire
resistance of one cell-to-cell segment. ``R_s = 0`` pins the end nodes to the driver / ground.
A bit line's output current is the sum of its devices' currents ``G_ij (V_w(i,j) - V_b(i,j))``.

The network is linear, so the output currents are ``I = V @ G_eff`` for an effective
(R, C) matrix that depends on the conductances and the resistances only. Both solvers return
``G_eff`` (the current out of bit line ``c`` per volt on word line ``r``, all other drivers at
0 V), computed once per programmed array; every read is then one matrix product.

* :func:`effective_conductance_exact`: nodal analysis, a sparse LU factorisation of the
  2 R C node equations (SciPy's SuperLU) solved for the R unit drives. Exact to float64
  rounding; cost grows fast with the array (reported in ``benchmarks/bench_crossbar.py``).
* :func:`effective_conductance_approx`: alternating line relaxation (block Gauss-Seidel): with
  the bit-line voltages held, every word line is a tridiagonal system, solved exactly (Thomas
  algorithm, factorised once, vectorised over lines and drives); then every bit line likewise,
  sweep after sweep from grounded bit lines until ``G_eff`` stops moving (``tolerance``). The
  node matrix is symmetric positive definite, so the sweeps converge for any resistance; slowly
  when the drop is large (error and cost against the exact solve: ``docs/crossbar-model.md``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["NotConverged", "effective_conductance_exact", "effective_conductance_approx", "currents_exact", "node_matrix"]


def _check(g: torch.Tensor, r_wire: float, r_source: float) -> None:
    if g.dim() != 2:
        raise ValueError(f"conductances must be a (rows, cols) matrix, got shape {tuple(g.shape)}")
    if not (math.isfinite(r_wire) and r_wire > 0):
        raise ValueError(f"wire resistance must be a positive number of ohms, got {r_wire!r}")
    if not (math.isfinite(r_source) and r_source >= 0):
        raise ValueError(f"source resistance must be >= 0 ohms, got {r_source!r}")


def node_matrix(g: np.ndarray, r_wire: float, r_source: float):
    """The node conductance matrix (scipy CSC, 2RC x 2RC) of the crossbar, the pinned node
    indices (the line ends when ``r_source == 0``, else none) and the driven node indices.

    Node order: word-line node (i, j) -> ``i*C + j``; bit-line node (i, j) -> ``R*C + i*C + j``.
    Source connections are included (conductance ``1/r_source``) when ``r_source > 0``.
    """
    from scipy import sparse

    rows, cols = g.shape
    n = rows * cols
    gw = 1.0 / r_wire
    idx = np.arange(n).reshape(rows, cols)
    w, b = idx, idx + n
    diag = np.zeros(2 * n)
    r_i, c_i, v = [], [], []

    def couple(a, c, val):  # a conductance val between nodes a and c (arrays)
        r_i.extend([a.ravel(), c.ravel()])
        c_i.extend([c.ravel(), a.ravel()])
        v.extend([np.full(a.size, -val) if np.isscalar(val) else -val.ravel()] * 2)
        np.add.at(diag, a.ravel(), val if np.isscalar(val) else val.ravel())
        np.add.at(diag, c.ravel(), val if np.isscalar(val) else val.ravel())

    couple(w, b, g)  # the devices
    if cols > 1:
        couple(w[:, :-1], w[:, 1:], gw)  # word-line segments
    if rows > 1:
        couple(b[:-1, :], b[1:, :], gw)  # bit-line segments
    driven = w[:, 0].copy()
    sinks = b[-1, :].copy()
    if r_source > 0:
        diag[driven] += 1.0 / r_source
        diag[sinks] += 1.0 / r_source
        pinned = np.zeros(0, dtype=np.int64)
    else:
        pinned = np.concatenate([driven, sinks])
    r_i.append(np.arange(2 * n))
    c_i.append(np.arange(2 * n))
    v.append(diag)
    mat = sparse.csc_matrix((np.concatenate(v), (np.concatenate(r_i), np.concatenate(c_i))), shape=(2 * n, 2 * n))
    return mat, pinned, driven


def currents_exact(g: torch.Tensor, v: torch.Tensor, r_wire: float, r_source: float = 0.0) -> torch.Tensor:
    """Bit-line currents (B, C), amperes, of word-line voltages ``v`` (B, R), volts, on the
    crossbar of conductances ``g`` (R, C), siemens, solved exactly (nodal analysis)."""
    return v.to(torch.float64) @ effective_conductance_exact(g, r_wire, r_source)


#: unit drives solved together (bounds the memory of a solve to about 2 R C x 128 floats)
DRIVE_BLOCK = 128


def effective_conductance_exact(g: torch.Tensor, r_wire: float, r_source: float = 0.0) -> torch.Tensor:
    """``G_eff`` (R, C), siemens, float64: exact nodal solve with unit drives (see module doc).

    SciPy's BLAS runs single-threaded here: its threads spin against torch's on a busy machine
    (measured: a 2-episode keys-only evaluation took 112 s with
    two BLAS threads beside another job on two cores, 15 s with one)."""
    from threadpoolctl import threadpool_limits

    _check(g, r_wire, r_source)
    with threadpool_limits(limits=1, user_api="blas"):
        return _exact(g, r_wire, r_source)


def _exact(g: torch.Tensor, r_wire: float, r_source: float) -> torch.Tensor:
    from scipy.sparse.linalg import splu

    gn = g.detach().to(torch.float64).cpu().numpy()
    rows, cols = gn.shape
    n = rows * cols
    mat, pinned, driven = node_matrix(gn, r_wire, r_source)
    if r_source > 0:
        free = np.arange(2 * n)
        lu = splu(mat, permc_spec="COLAMD")
        couple = None
    else:  # the line ends are pinned: driven word-line ends at the drive, bit-line ends at 0 V
        free = np.setdiff1d(np.arange(2 * n), pinned)
        rows_free = mat.tocsr()[free]
        lu = splu(rows_free[:, free].tocsc(), permc_spec="COLAMD")
        couple = rows_free[:, driven]  # how the pinned drive nodes enter the free equations
    geff = np.empty((rows, cols))
    for r0 in range(0, rows, DRIVE_BLOCK):
        drives = np.arange(r0, min(rows, r0 + DRIVE_BLOCK))
        volts = np.zeros((2 * n, drives.size))
        if couple is None:
            rhs = np.zeros((2 * n, drives.size))
            rhs[driven[drives], np.arange(drives.size)] = 1.0 / r_source
            volts[:] = lu.solve(rhs)
        else:
            unit = np.zeros((rows, drives.size))
            unit[drives, np.arange(drives.size)] = 1.0
            volts[driven] = unit
            volts[free] = lu.solve(-(couple @ unit))
        vw = volts[:n].reshape(rows, cols, -1)
        vb = volts[n:].reshape(rows, cols, -1)
        geff[drives] = np.einsum("ij,ijr->rj", gn, vw - vb)
    return torch.from_numpy(geff).to(g.device)


class _Lines:
    """Tridiagonal systems of a set of lines, factorised once (Thomas algorithm, no pivoting: the
    systems are diagonally dominant): ``g`` (N, L) device conductances along N nodes of L lines,
    segments ``gw`` between neighbours, the source ``gs`` at node ``end`` (``inf`` pins it)."""

    def __init__(self, g: torch.Tensor, gw: float, gs: float, end: int):
        n = g.shape[0]
        diag = g.clone()
        diag[1:] += gw
        diag[:-1] += gw
        lower = torch.full_like(g, -gw)
        upper = torch.full_like(g, -gw)
        if math.isfinite(gs):
            diag[end] += gs
        else:  # the end node's equation becomes V = known
            diag[end] = 1.0
            lower[end] = 0.0
            upper[end] = 0.0
        cp = torch.empty_like(diag)
        inv = torch.empty_like(diag)
        inv[0] = 1.0 / diag[0]
        cp[0] = upper[0] * inv[0]
        for k in range(1, n):
            inv[k] = 1.0 / (diag[k] - lower[k] * cp[k - 1])
            cp[k] = upper[k] * inv[k]
        self.lower, self.cp, self.inv = lower[:, :, None], cp[:, :, None], inv[:, :, None]

    def solve_(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve in place: ``rhs`` (N, L, B) becomes the node voltages."""
        lower, cp, inv = self.lower, self.cp, self.inv
        rhs[0].mul_(inv[0])
        for k in range(1, rhs.shape[0]):
            rhs[k].addcmul_(lower[k], rhs[k - 1], value=-1.0).mul_(inv[k])
        for k in range(rhs.shape[0] - 2, -1, -1):
            rhs[k].addcmul_(cp[k], rhs[k + 1], value=-1.0)
        return rhs


class NotConverged(RuntimeError):
    """The line relaxation did not converge within its sweeps (a very strong IR drop)."""


def effective_conductance_approx(g: torch.Tensor, r_wire: float, r_source: float = 0.0,
                                 tolerance: float = 1e-5, max_sweeps: int = 200,
                                 strict: bool = False) -> torch.Tensor:
    """``G_eff`` (R, C), siemens, float64, by alternating line relaxation (see module doc): each
    sweep solves every word line, then every bit line, exactly; sweeps stop when no entry of
    ``G_eff`` moved by more than ``tolerance`` x its largest entry, or after ``max_sweeps``
    (then :class:`NotConverged` is raised if ``strict``)."""
    _check(g, r_wire, r_source)
    if not (tolerance > 0):
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    gd = g.detach().to(torch.float64)
    rows, cols = gd.shape
    gw = 1.0 / r_wire
    gs = 1.0 / r_source if r_source > 0 else math.inf
    words = _Lines(gd.T.contiguous(), gw, gs, 0)  # nodes along a word line: (cols, rows)
    bits = _Lines(gd, gw, gs, rows - 1)  # nodes along a bit line: (rows, cols)
    g_w = gd.T[:, :, None]  # (cols, rows, 1)
    g_b = gd[:, :, None]  # (rows, cols, 1)
    eye = torch.eye(rows, dtype=torch.float64, device=gd.device)
    geff = torch.empty(rows, cols, dtype=torch.float64, device=gd.device)
    for r0 in range(0, rows, DRIVE_BLOCK):
        drive = eye[:, r0:r0 + DRIVE_BLOCK]  # (rows, block): word-line drive voltages
        block = drive.shape[1]
        vb = torch.zeros(rows, cols, block, dtype=torch.float64, device=gd.device)  # (i, j, drive)
        last = None
        for sweep in range(max_sweeps):
            rhs = (g_w * vb.transpose(0, 1)).contiguous()  # (j, i, drive): device currents into word-line nodes
            if math.isfinite(gs):
                rhs[0] += gs * drive
            else:
                rhs[0] = drive
            vw = words.solve_(rhs).transpose(0, 1)  # (i, j, drive)
            rhs_b = (g_b * vw).contiguous()
            if not math.isfinite(gs):
                rhs_b[-1] = 0.0
            vb = bits.solve_(rhs_b)
            cur = torch.einsum("ij,ijr->rj", gd, vw - vb)
            if last is not None and (cur - last).abs().max() <= tolerance * cur.abs().max():
                break
            if strict and sweep == max_sweeps - 1:
                raise NotConverged(f"line relaxation moved by more than {tolerance:g} after {max_sweeps} sweeps")
            last = cur
        geff[r0:r0 + DRIVE_BLOCK] = cur
    return geff.to(g.device)
