"""The controller on crossbars: plain layers patched with ``memtorch.mn``, programmed by our pipeline.

:func:`convert_controller` (the controller half of :func:`crossbar.convert`) deep-copies the plain ``nn.Sequential`` (from ``batmann.models.export_plain``) and
runs MemTorch's ``patch_model`` on it: every ``nn.Conv2d`` / ``nn.Linear`` becomes a
``memtorch.mn.Conv2d`` / ``memtorch.mn.Linear`` holding a pair of crossbars (DoubleColumn). The
conductance matrices of those crossbars are then the ones of :mod:`crossbar.conductance`
(target map -> variability -> finite states -> stuck-at faults), because MemTorch's own
``FiniteConductanceStates`` does nothing and its faults are wiped by later non-idealities
(docs: MEMTORCH-NOTES.md). Two programming routes (``HardwareSpec.programming``):

- ``"fast"`` (default): while ``patch_model`` runs, MemTorch's ``init_crossbar`` is swapped for a
  function that returns MemTorch-compatible crossbars holding our conductance matrices, so
  MemTorch never builds its one-Python-object-per-device arrays. The result is the same
  ``memtorch.mn`` modules with the same forward code, in 0.1-2 s for the whole BATMANN
  controller (1.76 M weights, 3.5 M devices; measured here on 2 shared cores).
- ``"memtorch"``: MemTorch builds every device object as usual (about 15 us and 0.4 KB per device;
  59 s and 1.2 GB for the controller, measured here), then the conductance matrices are
  overwritten with ours (the device objects are left as they were). Identical features; kept to
  cross-check the fast route.

Reading. By default (``read="vectorised"``) each patched module's forward is replaced by the
vectorised read of :mod:`crossbar.conductance` on the module's programmed arrays (for a conv layer:
convolutions with the G+ - G- planes, one per row tile, each through the ADC), scaled back to
weight units exactly. MemTorch's own forward (``read="memtorch"``: ``forward_legacy(False)``,
unfolding each image separately, then a matmul with G+ - G-; output scaled back through
``transform_output`` instead of ``tune_()``'s regression on random inputs) gives the same
features within float rounding (tested) but is about 20x slower than digital for the 128->128
5x5 conv here, and cannot model a fixed-range ADC: its ``quantize(..., 'linear')`` picks its
range from each tensor it is given, so an image's features would depend on its batch.

Every result is per image (inputs are scaled per image), so features can be cached by image id:
:class:`AnalogController` never pushes the same image through the same programmed chip twice.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
from typing import Hashable, Sequence

import torch
from torch import nn

from crossbar import conductance
from crossbar.memtorch_compat import import_memtorch
from crossbar.spec import HardwareSpec
from device_models.errors import HardwareSpecError


def _weight_order(array: conductance.ProgrammedArray, plane: int) -> torch.Tensor:
    """One plane's (R, C) conductances with rows in the weights' (c, kh, kw) order, the order
    MemTorch's forward unfolds its inputs in."""
    g = array.g[plane]
    if array.row_index is not None:
        g = g[torch.argsort(array.row_index)]
    return g.float().contiguous()


class ProgrammedCrossbar:
    """Duck-types the parts of ``memtorch.bh.crossbar.Crossbar`` that ``memtorch.mn`` forward reads.

    One plane (G+ or G-) of a :class:`crossbar.conductance.ProgrammedArray`; no device objects.
    """

    def __init__(self, array: conductance.ProgrammedArray, plane: int, r_on: float, r_off: float):
        self.array = array
        self.plane = plane
        self.rows, self.columns = array.rows, array.cols
        self.tile_shape = None
        self.tiles_map = None
        self.devices = None  # MemTorch's per-device objects are not built on the fast route
        self.r_on_mean, self.r_off_mean = r_on, r_off
        self.conductance_matrix = _weight_order(array, plane)
        self.max_abs_conductance = self.conductance_matrix.abs().max()

    def update(self, *args, **kwargs):  # MemTorch non-idealities would call this: refuse them
        raise RuntimeError("programmed crossbars have no MemTorch device objects; "
                           "apply non-idealities through HardwareSpec")


def _weights_rc(weight: torch.Tensor) -> torch.Tensor:
    """(out, in[, kh, kw]) weights as the crossbar's (rows = inputs, columns = outputs) matrix."""
    return weight.detach().reshape(weight.shape[0], -1).T.contiguous()


class _Programmer:
    """Programs each patched layer's arrays. A layer's devices are drawn from a stream named after
    the layer, so they do not depend on the order in which MemTorch visits the layers."""

    def __init__(self, spec: HardwareSpec, names_by_ptr: dict[int, str]):
        self.spec = spec
        self.names_by_ptr = names_by_ptr
        self.arrays: dict[str, conductance.ProgrammedArray] = {}

    def __call__(self, weights, **kwargs):
        name = self.names_by_ptr.get(weights.data_ptr(), f"#{len(self.arrays)}")
        array = self.program_layer(name, weights)
        dev = self.spec.device
        crossbars = [ProgrammedCrossbar(array, 0, dev.r_on, dev.r_off),
                     ProgrammedCrossbar(array, 1, dev.r_on, dev.r_off)]

        def out(crossbars, operation, idx=(0, 1), **kw):  # = MemTorch's DoubleColumn operation
            return operation(crossbars[idx[0]], **kw) - operation(crossbars[idx[1]], **kw)

        return crossbars, out

    def program_layer(self, name: str, weight: torch.Tensor) -> conductance.ProgrammedArray:
        array = program_layer(self.spec, name, weight)
        self.arrays[name] = array
        return array


def layer_devices(spec: HardwareSpec, name: str, weight: torch.Tensor) -> conductance.DevicePlanes:
    """The devices of layer ``name``'s arrays on the chip ``spec.seed`` (drawn from a stream
    named after the layer and its (rows, cols) shape, so independent of the other layers)."""
    w = _weights_rc(weight)
    stream = f"controller/{name}/shape={tuple(w.shape)}"
    return conductance.sample_planes(spec, w.shape[0], w.shape[1], spec.generator(stream), torch.float32)


def program_layer(spec: HardwareSpec, name: str, weight: torch.Tensor,
                  devices: conductance.DevicePlanes | None = None, write: str = "") -> conductance.ProgrammedArray:
    """Write a layer's weights (out, in[, k, k]) onto its arrays on the chip ``spec.seed``.

    ``devices``: the layer's devices (:func:`layer_devices`; drawn here when None). ``write``
    names this write, so that a rewrite of the same devices (hardware-aware training programs
    them every episode) draws fresh programming and read noise; "" is the chip's one write."""
    w = _weights_rc(weight).float()
    stream = f"controller/{name}/shape={tuple(w.shape)}"
    if devices is None:
        devices = layer_devices(spec, name, weight)
    drift = spec.get("drift")
    suffix = f"/{write}" if write else ""
    array = conductance.program(spec, devices, w, generator=spec.generator(f"{stream}/write{suffix}"),
                                time=drift.time if drift is not None else 0.0, read_stream=f"{stream}/read{suffix}")
    if weight.dim() == 4 and spec.conv_rows == "kernel" and weight.shape[1] > 1:
        # devices and writes are drawn per weight in the (c, kh, kw) order either way; only
        # their places on the arrays change (with one input channel both orders are the same)
        array = array.with_rows(conductance.kernel_major_rows(weight.shape[1], weight.shape[2]))
    return array


@contextlib.contextmanager
def _fast_init_crossbar(programmer: _Programmer):
    """Swap ``init_crossbar`` in memtorch.mn.Linear / memtorch.mn.Conv2d for ``programmer``."""
    mods = [sys.modules["memtorch.mn.Linear"], sys.modules["memtorch.mn.Conv2d"]]
    saved = [m.init_crossbar for m in mods]
    for m in mods:
        m.init_crossbar = programmer
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            m.init_crossbar = f


def _check_plain(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and type(m) not in (nn.Conv2d, nn.Linear):
            raise HardwareSpecError(
                f"layer {name} is a {type(m).__name__} (a subclass): MemTorch only patches plain "
                "nn.Conv2d/nn.Linear; export the controller with export_plain first")
        if type(m) is nn.Conv2d:
            if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.kernel_size[0] != m.kernel_size[1] \
                    or m.stride[0] != m.stride[1] or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise HardwareSpecError(
                    f"layer {name}: only square, undilated, ungrouped convolutions with numeric zero "
                    "padding are supported on crossbars (MemTorch's Conv2d forward assumes them)")


def _scale_back(array: conductance.ProgrammedArray, conv: bool):
    factor = (array.col_scale / (array.g_on - array.g_off)).float()
    if conv:
        factor = factor.view(-1, 1, 1)

    def transform_output(out: torch.Tensor) -> torch.Tensor:
        return out * factor

    return transform_output


def read_layer(spec: HardwareSpec, array: conductance.ProgrammedArray, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer``'s output for ``x`` read from its programmed ``array``: (B, C_in, H, W) ->
    (B, C_out, H', W') for a convolution (geometry and bias from ``layer``), (..., in) -> (..., out)
    for a linear layer; float32, in weight units."""
    if isinstance(layer, nn.Conv2d):
        y = conductance.read_conv(spec, array, x, layer.kernel_size[0], layer.stride[0], layer.padding[0]).float()
        return y + layer.bias.view(1, -1, 1, 1) if layer.bias is not None else y
    y = conductance.read(spec, array, x.reshape(-1, x.shape[-1])).float()
    y = y.reshape(*x.shape[:-1], -1)
    return y + layer.bias if layer.bias is not None else y


def _vectorised_forward(spec: HardwareSpec, array: conductance.ProgrammedArray):
    """A forward for a patched module that reads through :func:`read_layer`."""

    def forward(self, x):
        return read_layer(spec, array, self, x)

    return forward


class AnalogController:
    """A controller whose weight layers run on (simulated) crossbars, with a per-chip feature cache.

    ``features(images, ids=None)``: (B, C, H, W) -> (B, d). With ``ids`` (one hashable per image,
    identifying the exact input tensor, e.g. ``dataset_index * 4 + rotation // 90``), images whose
    features this chip has already computed are not recomputed. ``n_computed`` counts images
    actually pushed through the chip. With ``spec.analog == "keys"`` the model is the plain
    digital controller (same interface, same cache).
    """

    def __init__(self, model: nn.Module, spec: HardwareSpec, analog: bool,
                 arrays: dict[str, conductance.ProgrammedArray] | None = None, batch_size: int = 64):
        self.model = model.eval()
        self.spec = spec
        self.analog = analog
        self.arrays = arrays or {}
        self.batch_size = batch_size
        self.cache: dict[Hashable, torch.Tensor] = {}
        self.n_computed = 0

    @torch.no_grad()
    def _compute(self, images: torch.Tensor) -> torch.Tensor:
        outs = [self.model(images[i:i + self.batch_size]) for i in range(0, images.shape[0], self.batch_size)]
        self.n_computed += images.shape[0]
        return torch.cat(outs) if outs else images.new_zeros((0,))

    def features(self, images: torch.Tensor, ids: Sequence[Hashable] | None = None) -> torch.Tensor:
        images = images.detach().cpu().float()
        if ids is None:
            return self._compute(images)
        ids = list(ids.tolist() if isinstance(ids, torch.Tensor) else ids)
        if len(ids) != images.shape[0]:
            raise ValueError(f"{len(ids)} ids for {images.shape[0]} images")
        todo, seen = [], set()
        for i, key in enumerate(ids):
            if key not in self.cache and key not in seen:
                todo.append(i)
                seen.add(key)
        if todo:
            feats = self._compute(images[todo])
            for i, f in zip(todo, feats):
                self.cache[ids[i]] = f.clone()
        return torch.stack([self.cache[k] for k in ids])

    def clear_cache(self) -> None:
        self.cache.clear()

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Set calibrated ADC ranges (``spec.adc_spec.range`` != "worst") from ``images``
        (B, C, H, W): every array records its tile currents on them, then fixes each tile's range
        at the spec's percentile. Nothing is cached; the feature cache is cleared."""
        adc = self.spec.adc_spec
        if not self.analog or adc is None or not adc.calibrated:
            return
        for array in self.arrays.values():
            conductance.start_calibration(self.spec, array)
        try:
            images = images.detach().cpu().float()
            for i in range(0, images.shape[0], self.batch_size):
                self.model(images[i:i + self.batch_size])
        finally:
            for array in self.arrays.values():
                if array.calibration is not None:
                    conductance.finish_calibration(self.spec, array)
        self.cache.clear()

    def summary(self) -> list[dict]:
        """Per analog layer: name, rows, columns, devices, tiles."""
        rows = []
        for name, a in self.arrays.items():
            rows.append({"layer": name, "rows": a.rows, "cols": a.cols, "devices": 2 * a.rows * a.cols,
                         "tiles": conductance.tile_count(self.spec, a.rows, a.cols)})
        return rows


def convert_controller(plain_controller: nn.Module, spec: HardwareSpec, read: str = "vectorised") -> AnalogController:
    """The controller as ``spec`` says: digital (``analog="keys"``) or patched onto crossbars.

    ``read``: ``"vectorised"`` (default; the fast read of :mod:`crossbar.conductance`) or
    ``"memtorch"`` (MemTorch's own ``memtorch.mn`` forward; only for a linear read, i.e. without
    ADC or DAC bits). Seeds Python, NumPy and torch with ``spec.seed`` (MemTorch draws from them).
    """
    if read not in ("memtorch", "vectorised"):
        raise ValueError(f"read must be 'vectorised' or 'memtorch', got {read!r}")
    model = copy.deepcopy(plain_controller).cpu().float().eval()
    if not spec.controller_analog:
        return AnalogController(model, spec, analog=False)
    _check_plain(model)
    if not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules()):
        raise HardwareSpecError("the controller has no nn.Conv2d/nn.Linear layer to put on crossbars")
    if read == "memtorch" and (not spec.linear_read or spec.stage("read")):
        raise HardwareSpecError("MemTorch's forward cannot model a fixed-range ADC, DAC bits, read noise or drift: "
                                "use read='vectorised'")
    memtorch = import_memtorch()
    from memtorch.mn.Module import patch_model

    spec.seed_globals()
    dev = spec.device
    model_cls = getattr(memtorch.bh.memristor, dev.memtorch_model)
    names = [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    # MemTorch builds its modules with bias=True and copies the bias only when there is one, so
    # a bias-free layer would get a random bias: remember which layers have none (zeroed below).
    no_bias = {n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear) and m.bias is None}
    names_by_ptr = {m.weight.data_ptr(): n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)}
    programmer = _Programmer(spec, names_by_ptr)
    kwargs = dict(memristor_model=model_cls, memristor_model_params=dict(dev.memtorch_params),
                  module_parameters_to_patch=[nn.Conv2d, nn.Linear], transistor=True,
                  tile_shape=None, max_input_voltage=None, ADC_resolution=None, quant_method=None,
                  verbose=False)
    with torch.no_grad():
        if spec.programming == "fast":
            with _fast_init_crossbar(programmer):
                model = patch_model(model, **kwargs)
        else:
            model = patch_model(model, **kwargs)
    patched = [(n, m) for n, m in model.named_modules()
               if isinstance(m, (memtorch.mn.Conv2d, memtorch.mn.Linear))]
    if len(patched) != len(names):
        raise HardwareSpecError(f"MemTorch patched {len(patched)} of {len(names)} weight layers")
    arrays: dict[str, conductance.ProgrammedArray] = {}
    use_ours = read == "vectorised"
    for name, m in patched:
        if spec.programming == "fast":
            array = m.crossbars[0].array
        else:  # overwrite MemTorch's matrices (its device objects are left as they were)
            array = programmer.program_layer(name, m.weight)
            for plane, cb in enumerate(m.crossbars[:2]):
                cb.conductance_matrix = _weight_order(array, plane)
                cb.max_abs_conductance = cb.conductance_matrix.abs().max()
        arrays[name] = array
        if name in no_bias and m.bias is not None:
            m.bias.data.zero_()
        is_conv = isinstance(m, memtorch.mn.Conv2d)
        m.transform_output = _scale_back(array, is_conv)
        if use_ours:
            m.forward = types.MethodType(_vectorised_forward(spec, array), m)
    model.forward_legacy(False)
    return AnalogController(model, spec, analog=True, arrays=arrays)
