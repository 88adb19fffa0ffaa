"""Controllers (full precision, XNOR-Net, RBNN), their quantised layers and the plain-layer export."""

from batmann.models.controller import (
    CONTROLLER_KINDS,
    Controller,
    build_controller,
    check_kind,
    controller_layer_names,
    controller_layer_types,
)
from batmann.models.export import PLAIN_MODULE_TYPES, export_plain, exported_weight_layers
from batmann.models.layers import (
    BinaryLinear,
    Int8Conv2d,
    Int8Linear,
    RbnnConv2d,
    RbnnLinear,
    SignActivation,
    StandardizeActivation,
    XnorConv2d,
    export_layer,
)

__all__ = [
    "CONTROLLER_KINDS",
    "Controller",
    "build_controller",
    "check_kind",
    "controller_layer_names",
    "controller_layer_types",
    "PLAIN_MODULE_TYPES",
    "export_plain",
    "exported_weight_layers",
    "export_layer",
    "BinaryLinear",
    "Int8Conv2d",
    "Int8Linear",
    "RbnnConv2d",
    "RbnnLinear",
    "SignActivation",
    "StandardizeActivation",
    "XnorConv2d",
]
