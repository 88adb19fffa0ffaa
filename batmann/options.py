"""Every option list of the toolkit, defined once: the configuration classes validate against
these tuples and the command line offers them as ``choices``."""

from __future__ import annotations

#: Controller architectures (``--controller``).
CONTROLLERS: tuple[str, ...] = ("fp", "xnor", "xnor-binary-fc", "rbnn", "rbnn-binary-fc")
#: Training-time similarity and sharpening (``--sim-cal``); see :mod:`batmann.memory`.
SIM_CALS: tuple[str, ...] = ("cos_softabs", "cos_softabs_seed", "cos_softmax", "dot_abs")
#: Key (and query) formats at inference and for training keys (``--keys``, ``--train-keys``).
KEY_MODES: tuple[str, ...] = ("real", "bipolar", "binary")
#: Training/evaluation arithmetic (``--precision``).
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
#: Compiled element-wise training kernels of binarized layers (``--compile``).
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
#: Training losses (``--loss``).
LOSSES: tuple[str, ...] = ("ce", "nll")
#: Image data sets of the episodes (``--dataset``); see :func:`batmann.data.load_episode_images`.
DATASETS: tuple[str, ...] = ("omniglot", "mnist")
#: Omniglot character splits (``--split``); see :mod:`batmann.data.splits`.
SPLITS: tuple[str, ...] = ("seed", "lake")
#: Fixed evaluation protocols (``batmann evaluate --protocol``); see :func:`batmann.config.protocol_options`.
PROTOCOLS: tuple[str, ...] = ("lake",)
#: Controller layers ``--freeze`` may name, in forward order; ``features`` stands for conv1..conv4.
FREEZABLE: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "fc1")
FREEZE_ALIASES: dict[str, tuple[str, ...]] = {"features": ("conv1", "conv2", "conv3", "conv4")}
