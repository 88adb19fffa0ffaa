"""The BATMANN controller: a small CNN mapping a 32x32 image to a feature vector (a key).

Architecture (seed ``model/controller.py``; no padding, no batch norm)::

    conv1  C->128 5x5   ReLU      32 -> 28
    conv2  128->128 5x5 ReLU      28 -> 24,  maxpool 2  -> 12
    conv3  128->128 3x3 ReLU      12 -> 10
    conv4  128->128 3x3 ReLU      10 -> 8,   maxpool 2  -> 4
    flatten 128*4*4 = 2048,  fc1  2048 -> feature_dim (no activation)

Kinds (:data:`CONTROLLER_KINDS`) and the layer type at each position:

================  =============  ===================  =============
kind              conv1          conv2..conv4         fc1
================  =============  ===================  =============
fp                Conv2d         Conv2d               Linear
xnor              Int8Conv2d     XnorConv2d           Int8Linear
xnor-binary-fc    Int8Conv2d     XnorConv2d           BinaryLinear
rbnn              Conv2d         RbnnConv2d           Linear
rbnn-binary-fc    Conv2d         RbnnConv2d           RbnnLinear
================  =============  ===================  =============

As in the seed, the RBNN controllers keep conv1 (and fc1 for ``rbnn``) in full precision, the
8-bit conv1 of the XNOR controllers has no bias, and every other layer has one.

Initialisation follows the seed's ``_init_weights`` (conv weights ~ N(0, 2 / (k*k*out)), conv
biases 0, linear weights ~ N(0, 0.01^2), linear biases 1) but draws from a private
``torch.Generator`` seeded with ``init_seed`` (806, the seed's value) instead of resetting the
global RNG. ``alpha`` is then set to ``mean|W|`` of the initialised weights (the seed computes it
from PyTorch's default init, before ``_init_weights``).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from batmann.errors import ConfigError
from batmann.options import CONTROLLERS
from batmann.models import quantizers as q
from batmann.models.layers import (
    BinaryLinear,
    Int8Conv2d,
    Int8Linear,
    MaxPool2d,
    RbnnConv2d,
    RbnnLinear,
    XnorConv2d,
    _RbnnMixin,
    conv_output,
    conv_relu_pool,
)

CONTROLLER_KINDS = CONTROLLERS
#: binarized layers that take the previous layer's ReLU into their input's sign or
#: standardisation in training (``input_relu``)
_FOLDS_INPUT_RELU = (XnorConv2d, RbnnConv2d)
INPUT_SIZE = 32
CHANNELS = 128
FC_IN = CHANNELS * 4 * 4  # 2048 for a 32x32 input
DEFAULT_INIT_SEED = 806

# (name, kind of module, kernel size or None) in forward order; "fc1" sits outside ``features``
_FEATURE_LAYOUT = (
    ("conv1", "conv", 5),
    ("relu1", "relu", None),
    ("conv2", "conv", 5),
    ("relu2", "relu", None),
    ("maxpool1", "pool", None),
    ("conv3", "conv", 3),
    ("relu3", "relu", None),
    ("conv4", "conv", 3),
    ("relu4", "relu", None),
    ("maxpool2", "pool", None),
)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def controller_layer_names() -> tuple[str, ...]:
    """Qualified names of the weight layers in forward order (the same for every kind)."""
    return ("features.conv1", "features.conv2", "features.conv3", "features.conv4", "fc1")


def controller_layer_types(kind: str) -> dict[str, str]:
    """``{layer name: class name}`` for a controller kind (see the module docstring)."""
    check_kind(kind)
    xnor = kind.startswith("xnor")
    rbnn = kind.startswith("rbnn")
    binary_fc = kind.endswith("binary-fc")
    conv1 = "Int8Conv2d" if xnor else "Conv2d"
    inner = "XnorConv2d" if xnor else "RbnnConv2d" if rbnn else "Conv2d"
    if xnor:
        fc = "BinaryLinear" if binary_fc else "Int8Linear"
    elif rbnn:
        fc = "RbnnLinear" if binary_fc else "Linear"
    else:
        fc = "Linear"
    names = controller_layer_names()
    return dict(zip(names, (conv1, inner, inner, inner, fc)))


def check_kind(kind: str) -> str:
    """Return ``kind`` or raise :class:`ConfigError` with a one-line message."""
    if kind not in CONTROLLER_KINDS:
        raise ConfigError(f"controller kind {kind!r} is not one of {', '.join(CONTROLLER_KINDS)}")
    return kind


class Controller(nn.Module):
    """The CNN controller: ``(B, C, 32, 32) -> (B, feature_dim)``. Build with :func:`build_controller`.

    Attributes ``kind`` and :attr:`config` (the keyword arguments of :func:`build_controller`)
    describe the architecture, e.g. for checkpoints.
    """

    def __init__(self, kind: str = "fp", input_channel: int = 1, feature_dim: int = 512,
                 rotation_update: int = 1, a32: bool = True, int8_scale_mode: str = "absmax",
                 init_seed: int = DEFAULT_INIT_SEED):
        super().__init__()
        check_kind(kind)
        if int(input_channel) < 1:
            raise ConfigError(f"input_channel must be >= 1, got {input_channel}")
        if int(feature_dim) < 1:
            raise ConfigError(f"feature_dim must be >= 1, got {feature_dim}")
        if int(rotation_update) < 1:
            raise ConfigError(f"rotation_update must be >= 1, got {rotation_update}")
        if int8_scale_mode not in q.INT8_SCALE_MODES:
            raise ConfigError(f"int8 scale mode {int8_scale_mode!r} is not one of {', '.join(q.INT8_SCALE_MODES)}")
        self.kind = kind
        self.config = dict(kind=kind, input_channel=int(input_channel), feature_dim=int(feature_dim),
                           rotation_update=int(rotation_update), a32=bool(a32),
                           int8_scale_mode=int8_scale_mode, init_seed=int(init_seed))
        gen = torch.Generator().manual_seed(int(init_seed))
        types = controller_layer_types(kind)

        def make(name: str, cin: int, cout: int, k: int | None) -> nn.Module:
            t = types[name]
            if t == "Conv2d":
                return nn.Conv2d(cin, cout, k)
            if t == "Int8Conv2d":
                return Int8Conv2d(cin, cout, k, bias=False, scale_mode=int8_scale_mode)
            if t == "XnorConv2d":
                return XnorConv2d(cin, cout, k, bias=False)
            if t == "RbnnConv2d":
                return RbnnConv2d(cin, cout, k, bias=True, rotation_update=rotation_update, a32=a32, generator=gen)
            if t == "Linear":
                return nn.Linear(cin, cout)
            if t == "Int8Linear":
                return Int8Linear(cin, cout, bias=True, scale_mode=int8_scale_mode)
            if t == "BinaryLinear":
                return BinaryLinear(cin, cout, bias=True)
            if t == "RbnnLinear":
                return RbnnLinear(cin, cout, bias=True, rotation_update=rotation_update, a32=a32, generator=gen)
            raise AssertionError(t)  # pragma: no cover

        # PyTorch's default layer init draws from the global RNG; _init_weights overwrites it,
        # and fork_rng keeps the caller's global RNG state untouched.
        with torch.random.fork_rng(devices=[]):
            feats: OrderedDict[str, nn.Module] = OrderedDict()
            cin = int(input_channel)
            for name, what, k in _FEATURE_LAYOUT:
                if what == "conv":
                    feats[name] = make("features." + name, cin, CHANNELS, k)
                    cin = CHANNELS
                elif what == "relu":
                    feats[name] = nn.ReLU()
                else:
                    feats[name] = MaxPool2d(2, stride=2)
            self.features = nn.Sequential(feats)
            self.flatten = nn.Flatten()
            self.fc1 = make("fc1", FC_IN, int(feature_dim), None)
            self._init_weights(gen)

    @torch.no_grad()
    def _init_weights(self, gen: torch.Generator) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / n))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.01)
                if m.bias is not None:
                    m.bias.fill_(1.0)
            if hasattr(m, "reset_alpha"):
                m.reset_alpha()

    def export_plain(self) -> nn.Sequential:
        """This controller as plain ``nn`` layers for crossbars (see :func:`batmann.models.export_plain`)."""
        from batmann.models.export import export_plain

        return export_plain(self)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if x.dim() != 4 or x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"controller expects (B, C, {INPUT_SIZE}, {INPUT_SIZE}) input, got {tuple(x.shape)}")
        return self.fc1(self.flatten(self._trunk(x)))

    def _trunk(self, x: Tensor) -> Tensor:
        """``self.features(x)``, with the same values: an XNOR convolution with the ReLU (and max
        pool) after it is one call (``XnorConv2d.forward(x, relu=True, pool=...)``: in the
        kernel's epilogue on the popcount kernels; in float32 training, one backward from the
        pooled gradient); a plain convolution with its ReLU (and, in training, its max pool) is
        :func:`batmann.models.layers.conv_relu_pool` (the same backward from the pooled
        gradient); in training, the ReLU of a convolution whose output an XNOR or RBNN convolution
        binarises or standardises is that layer's ``input_relu`` (folded into its centered sign or
        standardisation, the same values);
        without autograd any other ReLU after a convolution runs in place on that convolution's
        fresh output. Layers with hooks keep their own calls."""
        grad = torch.is_grad_enabled()
        mods = list(self.features.children())
        i, relu_pending = 0, False
        while i < len(mods):
            m, nxt, after = (mods + [None, None])[i:i + 3]
            fuse = type(nxt) is nn.ReLU and isinstance(m, nn.Conv2d) and not _hooked(m) and not _hooked(nxt)
            if relu_pending and not (fuse and type(m) in _FOLDS_INPUT_RELU):  # not taken up: applied here
                x, relu_pending = torch.relu(x), False
            if fuse and isinstance(m, (XnorConv2d, RbnnConv2d)):
                pool = after if isinstance(after, MaxPool2d) and not _hooked(after) else None
                x = m(x, relu=True, pool=pool, input_relu=True) if relu_pending else m(x, relu=True, pool=pool)
                i += 2 if pool is None else 3
                relu_pending = False
            elif fuse and grad and type(after) in _FOLDS_INPUT_RELU and not _hooked(after):
                x, i, relu_pending = (conv_output(m, x) if type(m) is nn.Conv2d else m(x)), i + 2, True
            elif fuse and type(m) is nn.Conv2d:
                pool = after if grad and isinstance(after, MaxPool2d) and not _hooked(after) else None
                x = conv_relu_pool(m, x, pool)
                i += 2 if pool is None else 3
            elif fuse and not grad:
                x, i = m(x).relu_(), i + 2
            else:
                x, i = m(x), i + 1
        return x

    # --- RBNN training schedule --------------------------------------------------------------

    def rbnn_layers(self) -> list[nn.Module]:
        """The RBNN layers (empty for other kinds)."""
        return [m for m in self.modules() if isinstance(m, _RbnnMixin)]

    def begin_episode(self, episode: int, total_episodes: int, t_min: float = 1e-2, t_max: float = 10.0) -> None:
        """Call once per training episode, before the forward passes (no-op for non-RBNN kinds).

        Sets the RBNN surrogate-gradient schedule ``(k, t)`` of the seed's ``cpt_tk`` on every
        RBNN layer and, when ``episode % rotation_update == 0``, re-fits their rotations.
        """
        layers = self.rbnn_layers()
        if not layers:
            return
        k, t = q.rbnn_schedule(episode, total_episodes, t_min, t_max)
        for m in layers:
            m.begin_episode(episode, k, t)


def build_controller(kind: str, input_channel: int = 1, feature_dim: int = 512, rotation_update: int = 1,
                     a32: bool = True, *, int8_scale_mode: str = "absmax", init_seed: int = DEFAULT_INIT_SEED,
                     device: str | torch.device | None = None) -> Controller:
    """Build a controller of ``kind`` (one of :data:`CONTROLLER_KINDS`) on ``device`` (default CPU).

    ``rotation_update`` and ``a32`` only matter for the RBNN kinds, ``int8_scale_mode``
    (``"absmax"``, or the seed's ``"max"``) only for the XNOR kinds. Raises
    :class:`batmann.errors.ConfigError` for an unknown kind or an out-of-range option.
    """
    model = Controller(kind, input_channel, feature_dim, rotation_update, a32, int8_scale_mode, init_seed)
    if device is not None:
        model = model.to(device)
    return model
