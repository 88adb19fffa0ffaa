"""The option lists of the crossbar mapping: the values a :class:`crossbar.HardwareSpec` field or
a command-line flag may take, defined once (plain tuples, no torch: the command line builds its
choices without importing the simulators)."""

from __future__ import annotations

#: which parts of the system run on crossbars
ANALOG_PARTS = ("keys", "controller", "all")
#: how weights are scaled onto conductances: per output column, or one scale per layer (MemTorch's naive_map)
WEIGHT_MAPPINGS = ("per_column", "naive")
#: how a convolution's (c, kh, kw) weight rows are laid along the arrays' word lines
CONV_ROW_ORDERS = ("channel", "kernel")
#: how devices are programmed: the vectorised pipeline, or MemTorch's device objects (cross-checks)
PROGRAMMING_ROUTES = ("fast", "memtorch")
