"""Key-value memory, similarities and sharpened attention of the MANN.

The memory of an m-way n-shot episode holds ``m*n`` keys (the controller's support features,
shape ``(m*n, d)``) and their one-hot labels (``(m*n, m)``, the values). A read turns
similarities of ``Q`` queries to the keys into an attention ``(Q, m*n)``; summing the
attention per class (``attention @ one_hot``) gives the logits ``(Q, m)``.

Key quantisation (:func:`quantize_keys`): ``"real"`` (unchanged), ``"bipolar"`` (``+1`` where
``x > 0``, else ``-1``) and ``"binary"`` (``(bipolar + 1) / 2``, i.e. ``{0, 1}``). The seed uses
``torch.sign``, which sends an exact 0 to 0 (binary 0.5); we keep two levels. Both maps are
idempotent on their own outputs.

Training-time attention (:func:`sharpened_attention`), ``sim_cal``:

=====================  ======================================================================
``cos_softabs``        cosine, paper softabs ``sigmoid(b(a-0.5)) + sigmoid(b(-a-0.5))``,
                       ``b = 10``, normalised to sum 1 over the memory (the default).
``cos_softabs_seed``   cosine, the seed's ``exp(b(a-0.5)) + exp(b(-a-0.5))`` normalised to sum
                       1, then standardised by the mean and (unbiased) std of the whole
                       ``(Q, m*n)`` matrix (seed ``utils/mann.py: sim_comp``). Multiplying the
                       softabs by ``e`` (the ``exp(b(a-0.5)+1) + exp(b(-a-0.5)+1)`` form quoted in
                       ANCHORS.md) cancels in the normalisation, so it gives the same attention.
``cos_softmax``        cosine, ``exp(a)`` normalised to sum 1, then standardised as above
                       (seed ``sim_comp_softmax``).
``dot_abs``            ``|q.k| / d``, no normalisation. *Seed difference:* the seed's
                       ``dot_abs`` calls ``sim_comp_approx``, i.e. ``q.k / d`` without the
                       absolute value; we apply the abs the name and the seed README ("abs"
                       sharpening) describe.
=====================  ======================================================================

``standardize=True/False`` overrides the standardisation step for any ``sim_cal``. The cosine is
the seed's ``q.k / (|q| |k| + 1e-8)``. All of it runs in float32 with autocast disabled.

Inference (:func:`inference_similarity`), ``mode``: ``"bipolar"`` ``q.k / d`` on ``{-1, 1}``
vectors, ``"binary"`` ``1/2 + q.k / (2d)`` on ``{0, 1}`` vectors, ``"real"`` cosine. With
``quantize=True`` (the default) *both* the queries and the keys are quantised with the mode,
exactly as the seed's ``main_RBNN.py`` does with ``--quantization_infer 1`` (``binary_id 1``:
sign on both; ``binary_id 2``: ``(sign + 1) / 2`` on both; queries are never bipolar while keys
are binary). Note that for ``{0, 1}`` vectors ``1/2 + q.k/(2d)`` counts only co-active bits (it
is the fraction of matching bits only for the bipolar images of the vectors, see
:func:`matching_bits_similarity`); that is the seed's formula, kept as the issue states it.

*Seed differences at inference:* with ``--quantization_infer 0`` the seed keeps real features
but still uses the dot product (``q.k/d``); here ``"real"`` is the cosine, as the issue asks.
The seed's ``main.py`` (the S1/S2 runs) instead evaluates with the training read
``cos_softabs_seed`` and, for S2, quantises only the keys (``sign``) while queries stay real:
reproduce that with ``sharpened_attention(q, quantize_keys(k, "bipolar"), "cos_softabs_seed")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from batmann.errors import ConfigError
from batmann.options import KEY_MODES, SIM_CALS

SIMILARITY_METRICS = ("cosine", "dot", "dot_binary")
DEFAULT_BETA = 10.0
COSINE_EPS = 1e-8


def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{what} {value!r} is not one of {', '.join(allowed)}")
    return value


def _no_autocast(t: Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


def _check_pair(q: Tensor, k: Tensor) -> None:
    if q.dim() != 2 or k.dim() != 2 or q.shape[1] != k.shape[1]:
        raise ValueError(f"queries (Q, d) and keys (N, d) must share d; got {tuple(q.shape)} and {tuple(k.shape)}")


# ---------------------------------------------------------------------------------------------
# quantisation
# ---------------------------------------------------------------------------------------------


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, clip: float) -> Tensor:  # noqa: D102
        ctx.clip = clip
        if clip > 0:
            ctx.save_for_backward(x)
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x > 0, one, -one)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        if ctx.clip > 0:
            (x,) = ctx.saved_tensors
            grad = grad * (x.abs() <= ctx.clip).to(grad.dtype)
        return grad, None


def quantize_keys(x: Tensor, mode: str, ste: bool = False, clip: float = 0.0) -> Tensor:
    """Quantise features: ``"real"`` (as is), ``"bipolar"`` ({-1, 1}) or ``"binary"`` ({0, 1}).

    ``ste=True`` passes the gradient straight through instead of the zero gradient of ``sign``
    (the seed's training-time ``torch.sign`` on the keys gives no gradient): everywhere
    (identity) with ``clip=0``, else only where ``|x| <= clip`` (the hardtanh straight-through
    estimator of binarized networks, Hubara et al. 2016).
    """
    _check(mode, KEY_MODES, "key mode")
    if mode == "real":
        return x
    if ste:
        b = _SignSTE.apply(x, float(clip))
    else:
        one = torch.ones((), dtype=x.dtype, device=x.device)
        b = torch.where(x > 0, one, -one)
    return b if mode == "bipolar" else (b + 1) / 2


# ---------------------------------------------------------------------------------------------
# similarities and sharpening
# ---------------------------------------------------------------------------------------------


def scale_dots(dots: Tensor, q: Tensor, k: Tensor, mode: str) -> Tensor:
    """The inference similarity from the dot products ``dots`` (Q, N) of queries ``q`` (Q, d)
    with keys ``k`` (N, d), however the dots were computed (digitally, or read from a crossbar's
    currents): ``"bipolar"`` ``q.k/d``, ``"binary"`` ``1/2 + q.k/(2d)``, ``"real"`` the cosine
    ``q.k / (|q| |k| + 1e-8)``. The one definition of the similarity scale."""
    _check(mode, KEY_MODES, "key mode")
    d = q.shape[1]
    if mode == "bipolar":
        return dots / d
    if mode == "binary":
        return 0.5 + dots / (2 * d)
    q, k = q.to(dots.dtype), k.to(dots.dtype)
    return dots / (q.norm(dim=1, keepdim=True) * k.norm(dim=1).unsqueeze(0) + COSINE_EPS)


def cosine_similarity_matrix(q: Tensor, k: Tensor) -> Tensor:
    """``(Q, N)`` cosine ``q.k / (|q| |k| + 1e-8)`` (the seed's form), in float32."""
    _check_pair(q, k)
    with _no_autocast(q):
        q, k = q.float(), k.float()
        return scale_dots(q @ k.t(), q, k, "real")


def similarity(q: Tensor, k: Tensor, metric: str = "cosine") -> Tensor:
    """``(Q, N)`` similarities: ``"cosine"``, ``"dot"`` (``q.k / d``) or ``"dot_binary"`` (``1/2 + q.k/(2d)``).

    No quantisation happens here; see :func:`inference_similarity`.
    """
    _check(metric, SIMILARITY_METRICS, "similarity metric")
    if metric == "cosine":
        return cosine_similarity_matrix(q, k)
    _check_pair(q, k)
    with _no_autocast(q):
        dot = q.float() @ k.float().t()
        return scale_dots(dot, q, k, "bipolar" if metric == "dot" else "binary")


def matching_bits_similarity(q: Tensor, k: Tensor) -> Tensor:
    """Fraction of equal bits of ``{0, 1}`` vectors: ``(q.k + (1-q).(1-k)) / d``.

    Equals ``1/2 + q_b.k_b / (2d)`` for the bipolar images ``q_b = 2q - 1``, ``k_b = 2k - 1``
    (the Hamming similarity that the Nat Comm binary mode computes). Not used by default.
    """
    _check_pair(q, k)
    with _no_autocast(q):
        q, k = q.float(), k.float()
        return (q @ k.t() + (1 - q) @ (1 - k).t()) / q.shape[1]


def softabs(a: Tensor, beta: float = DEFAULT_BETA) -> Tensor:
    """The paper's softabs ``sigmoid(beta (a - 0.5)) + sigmoid(beta (-a - 0.5))`` (in (0, 2))."""
    return torch.sigmoid(beta * (a - 0.5)) + torch.sigmoid(beta * (-a - 0.5))


def softabs_seed(a: Tensor, beta: float = DEFAULT_BETA) -> Tensor:
    """The seed's softabs ``1/exp(-beta (a - 0.5)) + 1/exp(-beta (-a - 0.5))`` (unbounded)."""
    return torch.exp(beta * (a - 0.5)) + torch.exp(beta * (-a - 0.5))


def _standardize_all(w: Tensor) -> Tensor:
    """The seed's ``(w - w.mean()) / w.std()`` over the whole matrix (unbiased std)."""
    return (w - w.mean()) / w.std()


def sharpened_attention(q: Tensor, k: Tensor, sim_cal: str = "cos_softabs", beta: float = DEFAULT_BETA,
                        standardize: bool | None = None) -> Tensor:
    """Training-time attention ``(Q, N)`` of queries ``(Q, d)`` over keys ``(N, d)``.

    See the module docstring for each ``sim_cal``. ``standardize=None`` uses the seed's choice
    (on for ``cos_softabs_seed`` and ``cos_softmax``, off otherwise).
    """
    _check(sim_cal, SIM_CALS, "similarity/sharpening")
    _check_pair(q, k)
    with _no_autocast(q):
        if sim_cal == "dot_abs":
            w = (q.float() @ k.float().t()).abs() / q.shape[1]
        else:
            cos = cosine_similarity_matrix(q, k)
            if sim_cal == "cos_softabs":
                s = softabs(cos, beta)
            elif sim_cal == "cos_softabs_seed":
                s = softabs_seed(cos, beta)
            else:
                s = torch.exp(cos)
            w = s / s.sum(dim=1, keepdim=True)
        if standardize is None:
            standardize = sim_cal in ("cos_softabs_seed", "cos_softmax")
        if standardize:
            w = _standardize_all(w)
    return w


class KeyCodec:
    """The key format ``mode`` as a codec for a key memory built elsewhere (e.g. a crossbar,
    ``crossbar.convert``): ``encode`` quantises features with :func:`quantize_keys`, ``scale``
    turns their dot products into the inference similarity with :func:`scale_dots`."""

    def __init__(self, mode: str = "bipolar") -> None:
        self.mode = _check(mode, KEY_MODES, "key mode")

    def encode(self, x: Tensor) -> Tensor:
        return quantize_keys(x, self.mode)

    def scale(self, dots: Tensor, queries: Tensor, keys: Tensor) -> Tensor:
        return scale_dots(dots, queries, keys, self.mode)

    def __repr__(self) -> str:
        return f"KeyCodec({self.mode!r})"


def inference_similarity(q: Tensor, k: Tensor, mode: str = "bipolar", quantize: bool = True) -> Tensor:
    """Inference similarities ``(Q, N)``: ``"bipolar"`` ``q.k/d``, ``"binary"`` ``1/2 + q.k/(2d)``, ``"real"`` cosine.

    ``quantize=True`` first quantises both ``q`` and ``k`` with :func:`quantize_keys` (the
    seed's ``--quantization_infer 1``); the quantisers are idempotent, so already-quantised
    keys may be passed.
    """
    _check(mode, KEY_MODES, "key mode")
    if quantize:
        q, k = quantize_keys(q, mode), quantize_keys(k, mode)
    metric = {"real": "cosine", "bipolar": "dot", "binary": "dot_binary"}[mode]
    return similarity(q, k, metric)


# ---------------------------------------------------------------------------------------------
# values and the memory
# ---------------------------------------------------------------------------------------------


def one_hot_values(labels: Tensor, ways: int) -> Tensor:
    """``(N, ways)`` float32 one-hot values of ``labels`` (long, in ``[0, ways)``)."""
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if ways < 1:
        raise ValueError(f"ways must be >= 1, got {ways}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= ways):
        raise ValueError(f"labels must lie in [0, {ways}), got [{int(labels.min())}, {int(labels.max())}]")
    return F.one_hot(labels.long(), ways).float()


def class_logits(attention: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Sum the attention ``(Q, N)`` per class: ``attention @ one_hot(labels, ways)`` -> ``(Q, ways)``."""
    if attention.dim() != 2 or attention.shape[1] != labels.shape[0]:
        raise ValueError(f"attention (Q, N) and labels (N,) disagree: {tuple(attention.shape)} vs {tuple(labels.shape)}")
    with _no_autocast(attention):
        return attention.float() @ one_hot_values(labels, ways).to(attention.device)


class KeyMemory:
    """Keys ``(m*n, d)`` with one-hot values ``(m*n, ways)`` (labels in ``[0, ways)``).

    ``read`` is the training-time read (sharpened attention summed per class) and ``infer``
    the inference read; both return logits ``(Q, ways)``. Keys are stored as given (use
    :meth:`quantized` or :func:`quantize_keys` to store quantised keys).
    """

    def __init__(self, keys: Tensor, labels: Tensor, ways: int):
        if keys.dim() != 2 or labels.dim() != 1 or keys.shape[0] != labels.shape[0]:
            raise ValueError(f"keys (N, d) and labels (N,) disagree: {tuple(keys.shape)} vs {tuple(labels.shape)}")
        self.keys = keys
        self.labels = labels.to(keys.device).long()
        self.ways = int(ways)
        self.values = one_hot_values(self.labels, self.ways).to(keys.device)

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def dim(self) -> int:
        """Feature dimension ``d``."""
        return self.keys.shape[1]

    def _per_class(self, attention: Tensor) -> Tensor:
        with _no_autocast(attention):
            return attention.float() @ self.values

    def quantized(self, mode: str, ste: bool = False) -> "KeyMemory":
        """A memory with the keys quantised by ``mode``."""
        return KeyMemory(quantize_keys(self.keys, mode, ste=ste), self.labels, self.ways)

    def attention(self, queries: Tensor, sim_cal: str = "cos_softabs", beta: float = DEFAULT_BETA,
                  standardize: bool | None = None) -> Tensor:
        """Training-time attention ``(Q, N)`` (see :func:`sharpened_attention`)."""
        return sharpened_attention(queries, self.keys, sim_cal, beta, standardize)

    def read(self, queries: Tensor, sim_cal: str = "cos_softabs", beta: float = DEFAULT_BETA,
             standardize: bool | None = None) -> Tensor:
        """Training-time logits ``(Q, ways)``: the sharpened attention summed per class."""
        return self._per_class(self.attention(queries, sim_cal, beta, standardize))

    def infer(self, queries: Tensor, mode: str = "bipolar", quantize: bool = True) -> Tensor:
        """Inference logits ``(Q, ways)``: :func:`inference_similarity` summed per class."""
        return self._per_class(inference_similarity(queries, self.keys, mode, quantize))

    def predict(self, queries: Tensor, mode: str = "bipolar", quantize: bool = True) -> Tensor:
        """Predicted class per query (argmax of :meth:`infer`)."""
        return self.infer(queries, mode, quantize).argmax(dim=1)
