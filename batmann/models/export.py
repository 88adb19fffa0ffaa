"""Export a controller as an ``nn.Sequential`` of plain layers (for the crossbar simulation).

The result contains only ``nn.Conv2d``, ``nn.Linear``, ``nn.ReLU``, ``nn.MaxPool2d``,
``nn.Flatten`` and the input transforms :class:`~batmann.models.layers.SignActivation` /
:class:`~batmann.models.layers.StandardizeActivation` (see :data:`PLAIN_MODULE_TYPES`). Each
quantised layer becomes its input transform (if any, named ``<layer>_in``) followed by a plain
layer carrying the effective weights (``+-alpha`` for binary layers, the dequantised values for
8-bit layers). In eval mode the Sequential gives the controller's features up to float rounding.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn

from batmann.models.layers import SignActivation, StandardizeActivation, export_layer

PLAIN_MODULE_TYPES = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.BatchNorm2d, nn.Flatten,
    SignActivation, StandardizeActivation,
)
WEIGHT_LAYER_TYPES = (nn.Conv2d, nn.Linear)


def export_plain(controller: nn.Module) -> nn.Sequential:
    """Return an eval-mode ``nn.Sequential`` of plain modules equivalent to ``controller.eval()``.

    Layer names follow the controller (``conv1`` ... ``conv4``, ``relu1``, ``maxpool1``,
    ``flatten``, ``fc1``); an input transform is named ``conv2_in`` etc. The weights are copies
    (on the controller's device, float32); the controller is not modified.
    """
    if not hasattr(controller, "features") or not hasattr(controller, "fc1"):
        raise TypeError(f"export_plain expects a BATMANN controller, got {type(controller).__name__}")
    mods: OrderedDict[str, nn.Module] = OrderedDict()

    def add_layer(name: str, layer: nn.Module) -> None:
        plain, transform = export_layer(layer)
        if transform is not None:
            mods[f"{name}_in"] = transform
        mods[name] = plain

    for name, m in controller.features.named_children():
        if isinstance(m, WEIGHT_LAYER_TYPES):
            add_layer(name, m)
        elif type(m) in (nn.ReLU, nn.BatchNorm2d):
            mods[name] = copy.deepcopy(m)
        elif isinstance(m, nn.MaxPool2d):  # the controller's fast MaxPool2d: the same pooling
            mods[name] = nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode)
        else:  # pragma: no cover - the controller has nothing else
            raise TypeError(f"cannot export a {type(m).__name__} module ({name})")
    mods["flatten"] = nn.Flatten()
    add_layer("fc1", controller.fc1)
    seq = nn.Sequential(mods)
    seq.eval()
    return seq


def exported_weight_layers(seq: nn.Sequential) -> OrderedDict:
    """``{name: layer}`` for the plain ``nn.Conv2d`` / ``nn.Linear`` layers of an exported Sequential."""
    return OrderedDict((n, m) for n, m in seq.named_children() if isinstance(m, WEIGHT_LAYER_TYPES))
