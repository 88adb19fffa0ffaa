"""Hardware-aware training: a model's weight layers computed on simulated crossbars in the forward pass.

:class:`ChipInTheLoop` puts the chip of a :class:`HardwareSpec` into a training loop. Before
each training step, :meth:`~ChipInTheLoop.program` writes the layers' current weights onto a
chip's arrays (through :func:`crossbar.controller.program_layer`, the pipeline inference uses:
target map, conductance states, programming noise, stuck-at faults). Inside ``with chip:``
every hooked layer's output is replaced by the output read from its arrays (ADC with its
tiles, DAC, read noise, drift, IR drop: :func:`crossbar.controller.read_layer`, the inference
read), and the gradient passes straight through to the digital layer::

    y = y_digital + (y_chip - y_digital).detach()

so the loss is the chip's and the gradients are those of the digital layers evaluated at the
chip's activations (physics-aware training, Wright et al., Nature 601, 2022; the forward is
the non-differentiable simulator, the backward its digital twin). The straight-through
estimator covers what has no useful gradient: finite states, stuck devices, ADC codes.

Devices (variability, stuck-at map, drift exponents) are drawn per *draw*: chip ``d =
episode // redraw`` has seed ``derive_seed(spec.seed, "hardware-aware/d")``, so a run sees a new
chip every ``redraw`` episodes and never the chips of small seeds that evaluations use. Every
episode is a new write of the same devices (fresh programming and read noise). With a
calibrated ADC each layer's ranges are calibrated on the step's own inputs before it is read.

Knows nothing of BATMANN: the model's layers and how each exports to a plain layer (weights on
the chip, input transform before it) are given.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import torch
from torch import nn

from crossbar import conductance
from crossbar.controller import _check_plain, layer_devices, program_layer, read_layer
from crossbar.spec import HardwareSpec, derive_seed
from device_models.errors import HardwareSpecError

#: ``export(layer) -> (plain nn.Conv2d / nn.Linear with the weights the chip holds, input transform
#: applied before it or None)``; BATMANN's is ``batmann.models.layers.export_layer``
Exporter = Callable[[nn.Module], "tuple[nn.Module, nn.Module | None]"]

#: the validation chip's draw name (never an episode's)
VALIDATION_DRAW = "validation"


class ChipInTheLoop:
    """The forward of ``layers`` (``{name: module}``) read from simulated crossbars.

    ``spec``: the chip family (``analog`` must put the controller on crossbars); ``redraw``:
    episodes per chip draw (>= 1). Use :meth:`program` before each step, then run the step's
    forward inside ``with chip:``.
    """

    def __init__(self, spec: HardwareSpec, layers: Mapping[str, nn.Module], export: Exporter, redraw: int = 1):
        if not spec.controller_analog:
            raise HardwareSpecError(f"hardware-aware training puts the controller on the chip: analog must be "
                                    f"'controller' or 'all', got {spec.analog!r}")
        if isinstance(redraw, bool) or not isinstance(redraw, int) or redraw < 1:
            raise HardwareSpecError(f"redraw must be a whole number of episodes >= 1, got {redraw!r}")
        if not layers:
            raise HardwareSpecError("hardware-aware training needs at least one weight layer")
        self.spec = spec
        self.layers = dict(layers)
        self.export = export
        self.redraw = redraw
        self.arrays: dict[str, conductance.ProgrammedArray] = {}
        self._plain: dict[str, nn.Module] = {}
        self._transforms: dict[str, nn.Module | None] = {}
        self._devices: dict[str, conductance.DevicePlanes] = {}
        self._draw: str | None = None
        self._chip: HardwareSpec | None = None
        self._handles: list = []
        self.reads = 0

    def chip_seed(self, draw: int | str) -> int:
        """The seed of chip ``draw`` (an index, or :data:`VALIDATION_DRAW`)."""
        return derive_seed(int(self.spec.seed), f"hardware-aware/{draw}") & 0x7FFFFFFF

    @torch.no_grad()
    def program(self, episode: int, draw: int | str | None = None) -> None:
        """Write the layers' current weights onto chip ``draw`` (default ``episode // redraw``),
        as write number ``episode`` of its devices."""
        draw = str(episode // self.redraw if draw is None else draw)
        if draw != self._draw:
            self._draw, self._devices = draw, {}
            self._chip = dataclasses.replace(self.spec, seed=self.chip_seed(draw))
        for name, layer in self.layers.items():
            plain, transform = self.export(layer)
            _check_plain(nn.Sequential(plain))
            plain.eval()
            if transform is not None:
                transform.eval()
            weight = plain.weight.detach().float().cpu()
            if name not in self._devices:
                self._devices[name] = layer_devices(self._chip, name, weight)
            self.arrays[name] = program_layer(self._chip, name, weight, self._devices[name], write=f"episode={episode}")
            self._plain[name], self._transforms[name] = plain.cpu().float(), transform

    @torch.no_grad()
    def read(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Layer ``name``'s output for its input ``x`` (before its input transform), read from the
        chip; float32 on ``x``'s device."""
        if name not in self.arrays:
            raise RuntimeError("program the chip before reading it")
        chip, array, plain = self._chip, self.arrays[name], self._plain[name]
        transform = self._transforms[name]
        v = x.detach().float().cpu()
        if transform is not None:
            v = transform(v)
        adc = chip.adc_spec
        if adc is not None and adc.calibrated:  # ranges from this step's own inputs, then the read
            array.adc_fs = None
            conductance.start_calibration(chip, array)
            try:
                read_layer(chip, array, plain, v)
            finally:
                conductance.finish_calibration(chip, array)
        self.reads += 1
        return read_layer(chip, array, plain, v).to(x.device)

    def _hook(self, name: str):
        def hook(module, args, out):
            y = self.read(name, args[0])
            return out + (y.to(out.dtype) - out).detach()

        return hook

    def __enter__(self) -> "ChipInTheLoop":
        if self._handles:
            raise RuntimeError("the chip is already in the loop")
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
