"""The seed's experiments as data: which controllers are trained, and which rows each table has.

Each row names the training it needs (a controller and a training similarity, trained by
``batmann train`` underneath) and how it is evaluated (the key format at inference); the seed's
number for the row comes from its paper (``../shared/docs/ANCHORS.md``). Several rows share a
training: S1, S3 and S4 are one full-precision softabs controller evaluated with real, +-1 and
{0, 1} keys, as in the seed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Training:
    """One trained controller: ``batmann train --controller CONTROLLER --sim-cal SIM_CAL``, or
    a shipped ``checkpoint`` (no training)."""

    controller: str
    sim_cal: str
    checkpoint: str | None = None
    dataset: str = "omniglot"

    @property
    def name(self) -> str:
        """Run-folder name, e.g. ``xnor-cos_softabs`` or ``mnist-xnor-dot_abs`` (the checkpoint's
        name when shipped)."""
        prefix = "" if self.dataset == "omniglot" else f"{self.dataset}-"
        return self.checkpoint or f"{prefix}{self.controller}-{self.sim_cal}"


@dataclass(frozen=True)
class Row:
    """One row of a seed table: ``setting`` as the seed names it, evaluated with ``keys``;
    with ``epsilon``, on FGSM-attacked queries (pixel units); with ``chip`` (a :data:`CHIPS`
    name), digitally and on that crossbar chip, on the same episodes."""

    setting: str
    description: str
    training: Training
    keys: str
    seed_accuracy_pct: float | None
    epsilon: float | None = None
    chip: str | None = None

    @property
    def key(self) -> str:
        """Unique within an experiment: the setting, the epsilon of an attacked row, the chip."""
        return row_key(self.setting, self.epsilon, self.chip)


def row_key(setting: str, epsilon: float | str | None = None, chip: str | None = None) -> str:
    """``S3``, ``S3@0.1``, ``S3@ideal``, ``20w5s-binary@0.1@vteam-0.1``: a row's identity in its table."""
    key = setting
    if epsilon not in (None, ""):
        key += f"@{float(epsilon):g}"
    if chip:
        key += f"@{chip}"
    return key


#: the crossbar chips rows can name: the whole system (controller and key memory) in memory,
#: chip seed 0; ``vteam-0.1`` is the README's demo chip (VTEAM devices, 10 % device-to-device
#: variability), ``ideal`` the same mapping with ideal devices
CHIPS: dict[str, dict] = {
    "ideal": {"analog": "all", "preset": "ideal", "seed": 0},
    "vteam-0.1": {"analog": "all", "preset": "vteam", "variability": 0.1, "seed": 0},
}


@dataclass(frozen=True)
class Experiment:
    """A table of the seed: its rows, in the seed's order. ``kind``: ``accuracy`` (test
    episodes, clean or attacked) or ``tsne`` (one fixed episode's query features embedded in
    2-D, one figure panel per setting)."""

    name: str
    title: str
    rows: tuple[Row, ...]
    kind: str = "accuracy"
    dataset: str = "omniglot"

    def trainings(self) -> list[Training]:
        """The distinct trainings the rows need, in first-use order."""
        seen: dict[str, Training] = {}
        for r in self.rows:
            seen.setdefault(r.training.name, r.training)
        return list(seen.values())


FP_SOFTABS = Training("fp", "cos_softabs")
FP_SOFTMAX = Training("fp", "cos_softmax")
XNOR_SOFTABS = Training("xnor", "cos_softabs")
XNOR_SOFTMAX = Training("xnor", "cos_softmax")
RBNN_SOFTABS = Training("rbnn", "cos_softabs")
RBNN_SOFTMAX = Training("rbnn", "cos_softmax")

ABLATION = Experiment(
    "ablation",
    "20-way 5-shot ablation: controller, training sharpening and key format (seed S1-S10)",
    (
        Row("S1", "full precision, softabs, real keys", FP_SOFTABS, "real", 97.64),
        Row("S2", "XNOR (8-bit first/last), softabs, +-1 keys", XNOR_SOFTABS, "bipolar", 95.11),
        Row("S3", "full precision, softabs, +-1 keys", FP_SOFTABS, "bipolar", 95.56),
        Row("S4", "full precision, softabs, {0,1} keys", FP_SOFTABS, "binary", 45.00),
        Row("S5", "full precision, softmax, +-1 keys", FP_SOFTMAX, "bipolar", 61.53),
        Row("S6", "full precision, softmax, {0,1} keys", FP_SOFTMAX, "binary", 65.82),
        Row("S7", "XNOR, softabs, +-1 keys (S2's training)", XNOR_SOFTABS, "bipolar", 95.49),
        Row("S8", "XNOR, softmax, +-1 keys", XNOR_SOFTMAX, "bipolar", 96.45),
        Row("S9", "RBNN, softabs, +-1 keys", RBNN_SOFTABS, "bipolar", 96.30),
        Row("S10", "RBNN, softmax, +-1 keys", RBNN_SOFTMAX, "bipolar", 95.97),
    ),
)
# S1-S10 again on the ideal and on the VTEAM sigma-0.1 all-analog chip (digital on the same episodes)
ABLATION = Experiment(ABLATION.name, ABLATION.title, ABLATION.rows + tuple(
    Row(r.setting, r.description, r.training, r.keys, r.seed_accuracy_pct, chip=chip)
    for chip in CHIPS for r in ABLATION.rows))

SHARPENING = Experiment(
    "sharpening",
    "20-way 5-shot: training sharpening, XNOR vs RBNN, last-FC precision (seed rows 1-6)",
    (
        Row("1", "abs, XNOR, 8-bit last FC", Training("xnor", "dot_abs"), "bipolar", 96.71),
        Row("2", "abs, RBNN, full-precision last FC", Training("rbnn", "dot_abs"), "bipolar", 5.00),
        Row("3", "softabs, XNOR, binary last FC", Training("xnor-binary-fc", "cos_softabs"), "bipolar", 93.55),
        Row("4", "softabs, RBNN, binary last FC", Training("rbnn-binary-fc", "cos_softabs"), "bipolar", 95.89),
        Row("5", "abs, XNOR, binary last FC", Training("xnor-binary-fc", "dot_abs"), "bipolar", 96.53),
        Row("6", "abs, RBNN, binary last FC", Training("rbnn-binary-fc", "dot_abs"), "bipolar", 5.00),
    ),
)

#: the seed's FGSM step sizes (pixel units)
FGSM_EPSILONS = (0.1, 0.2, 0.3)
SHIPPED_BINARY = Training("xnor", "cos_softabs", checkpoint="20w5s-binary")

FGSM = Experiment(
    "fgsm",
    "20-way 5-shot under FGSM on the queries (seed: every setting falls to 5-10 %)",
    tuple(
        Row(r.setting, r.description, r.training, r.keys, None, epsilon=eps)
        for r in ABLATION.rows if r.chip is None and r.setting not in ("S1", "S2") for eps in FGSM_EPSILONS
    ) + tuple(
        Row("20w5s-binary", "shipped XNOR checkpoint, +-1 keys; digital and all-analog chip", SHIPPED_BINARY,
            "bipolar", None, epsilon=eps, chip="vteam-0.1")
        for eps in (0.0,) + FGSM_EPSILONS
    ),
)

#: the FGSM step of the attacked t-SNE views (pixel units)
TSNE_EPSILON = 0.1

TSNE = Experiment(
    "tsne",
    "t-SNE of the query features of one test episode, S1-S10, clean and FGSM-attacked",
    tuple(Row(r.setting, r.description, r.training, r.keys, None) for r in ABLATION.rows if r.chip is None)
    + tuple(Row(r.setting, r.description, r.training, r.keys, None, epsilon=TSNE_EPSILON)
            for r in ABLATION.rows if r.chip is None),
    kind="tsne",
)

MNIST = Experiment(
    "mnist",
    "MNIST 10-way 5-shot (10 classes x 20 training images), XNOR, abs or softabs, 8-bit or binary last FC",
    (
        Row("A1", "abs, XNOR, 8-bit last FC", Training("xnor", "dot_abs", dataset="mnist"), "bipolar", 91.38),
        Row("A2", "softabs, XNOR, binary last FC", Training("xnor-binary-fc", "cos_softabs", dataset="mnist"),
            "bipolar", 91.63),
        Row("A3", "abs, XNOR, binary last FC", Training("xnor-binary-fc", "dot_abs", dataset="mnist"), "bipolar", 91.26),
        Row("A4", "softabs, XNOR, 8-bit last FC", Training("xnor", "cos_softabs", dataset="mnist"), "bipolar", 75.85),
    ),
    dataset="mnist",
)

#: every experiment ``batmann experiment run`` knows, by name
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (ABLATION, SHARPENING, FGSM, TSNE, MNIST)}
