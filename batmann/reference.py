"""Published Omniglot accuracies that our checkpoints are measured against (1000 test episodes).

Sources: the seed's BATMANN results (S1 full precision, S2 binary: XNOR controller with 8-bit
first/last layers and +-1 keys), the Nat. Commun. 2021 software MANN, and the HD-MANN re-run
(d = 512). Numbers in %, keyed by ``(ways, shots)``.
"""

from __future__ import annotations

SEED_FP = {(5, 1): 95.25, (20, 5): 97.64, (100, 5): 95.68}
SEED_BINARY = {(5, 1): 94.40, (20, 5): 95.11, (100, 5): 94.32}
NAT_COMM_SOFTWARE = {(5, 1): 97.44, (20, 5): 97.79, (100, 5): 93.97}
#: published error rates (%) on Lake's one-shot protocol (``batmann evaluate --protocol lake``):
#: humans and Bayesian Program Learning (Lake et al., Science 2015), convolutional Siamese nets
#: (Koch et al., ICML deep learning workshop 2015)
LAKE_PROTOCOL_ERROR = {"humans": 4.5, "Bayesian Program Learning": 3.3, "Siamese nets": 8.0}
HD_MANN_D512 = {(5, 1): 97.74, (20, 5): 98.09, (100, 5): 94.62}


def is_binary(controller: str) -> bool:
    """Whether ``controller`` is one of the binarized controllers (S2-like)."""
    return controller != "fp"


def reference_rows(ways: int, shots: int, controller: str) -> list[tuple[str, float]]:
    """``(label, accuracy %)`` of every published number for an m-way n-shot problem, the
    seed's matching setting first; empty for problems nobody reported."""
    key = (ways, shots)
    seed_first = (SEED_BINARY, "seed BATMANN binary (S2)"), (SEED_FP, "seed BATMANN full precision (S1)")
    if not is_binary(controller):
        seed_first = seed_first[::-1]
    tables = [*seed_first, (NAT_COMM_SOFTWARE, "Nat. Commun. 2021 software MANN"),
              (HD_MANN_D512, "HD-MANN re-implementation, d = 512")]
    return [(label, table[key]) for table, label in tables if key in table]
