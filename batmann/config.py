"""Configuration dataclasses shared by the Python API and the ``batmann`` CLI.

Each dataclass validates itself once, in ``validate()``, raising :class:`ConfigError` with a
one-line message naming the bad value and what was expected. The CLI builds these objects
from its flags; the Python API takes them directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from batmann.errors import ConfigError

from batmann.options import (  # noqa: F401  (the option lists, importable from here too)
    COMPILE_MODES,
    CONTROLLERS,
    DATASETS,
    FREEZABLE,
    FREEZE_ALIASES,
    KEY_MODES,
    LOSSES,
    PRECISIONS,
    SIM_CALS,
    SPLITS,
)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} {value!r} is not one of {', '.join(choices)}")


def _positive(name: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum} (got {value!r})")


def fill_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A saved training configuration with the options it was trained under filled in.

    Runs saved before ``ste_clip`` existed used the identity straight-through gradient, so a
    missing ``ste_clip`` reads as 0 where ``train_keys`` quantised the features.
    """
    if "ste_clip" not in data and data.get("train_keys", "real") != "real":
        return {**data, "ste_clip": 0.0}
    return data


def keys_from_seed(quantization_infer: int, binary_id: int) -> str:
    """Map the seed's ``quantization_infer`` / ``binary_id`` pair to a key mode.

    ``quantization_infer=0`` keeps real features (cosine); ``1`` with ``binary_id=1`` gives
    bipolar {-1, 1} keys and queries, with ``binary_id=2`` binary {0, 1} ones.
    """
    if quantization_infer not in (0, 1):
        raise ConfigError(f"quantization_infer must be 0 or 1 (got {quantization_infer!r})")
    if binary_id not in (1, 2):
        raise ConfigError(f"binary_id must be 1 ({{-1,1}}) or 2 ({{0,1}}) (got {binary_id!r})")
    if quantization_infer == 0:
        return "real"
    return "bipolar" if binary_id == 1 else "binary"


def normalize_freeze(names: Any) -> list[str]:
    """``--freeze`` names (a list, or one comma-separated string; ``features`` = conv1..conv4) as
    a duplicate-free list in forward order. Raises :class:`ConfigError` for an unknown name or
    when every layer would be frozen."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"freeze must be a list of layer names (got {names!r})")
    chosen: set[str] = set()
    for raw in names:
        name = str(raw).strip()
        if name in FREEZE_ALIASES:
            chosen.update(FREEZE_ALIASES[name])
        elif name in FREEZABLE:
            chosen.add(name)
        else:
            raise ConfigError(f"freeze: layer {name!r} is not one of {', '.join(FREEZABLE + tuple(FREEZE_ALIASES))}")
    if len(chosen) == len(FREEZABLE):
        raise ConfigError("freeze names every layer (conv1..conv4 and fc1); leave at least one to train")
    return [n for n in FREEZABLE if n in chosen]


@dataclass
class AugmentConfig:
    """Random affine augmentation of training images (Koch et al. 2015 used the same four).

    Each support and query image of a training episode gets its own rotation in
    [-``rotation``, ``rotation``] degrees, shear in [-``shear``, ``shear``] degrees, scale in
    [1 - ``scale``, 1 + ``scale``] and translation in [-``translate``, ``translate``] pixels per
    axis, drawn from a generator seeded by the run's seed and the episode index (the same run
    gives the same images, resumed or not). All zero (the default) is off; validation and test
    images are never augmented. :data:`AUGMENT_DEFAULTS` is what ``--augment`` turns on.
    """

    rotation: float = 0.0
    shear: float = 0.0
    scale: float = 0.0
    translate: float = 0.0

    @property
    def enabled(self) -> bool:
        return any(v != 0 for v in (self.rotation, self.shear, self.scale, self.translate))

    def validate(self) -> "AugmentConfig":
        for name, hi in (("rotation", 180.0), ("shear", 45.0), ("scale", 0.5), ("translate", 16.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= hi:
                raise ConfigError(f"augment {name} must be a number in [0, {hi:g}], got {v!r}")
        return self


@dataclass
class HardwareAwareConfig:
    """Hardware-aware training (:class:`crossbar.in_the_loop.ChipInTheLoop`): the controller's
    forward runs on simulated crossbars, gradients straight through the digital layers.

    ``spec``: the chip family as ``HardwareSpec.to_dict()`` (None: off); ``redraw``: episodes
    per chip (new devices every ``redraw`` episodes, a fresh write every episode);
    ``digital_weight``: the loss is ``chip_loss + digital_weight * digital_loss`` (0: the chip's
    only), the digital forward of the same episode anchoring the weights' digital accuracy.
    """

    spec: dict | None = None
    redraw: int = 1
    digital_weight: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.spec is not None

    def hardware_spec(self):
        """The :class:`crossbar.HardwareSpec` of ``spec`` (a one-line error if it is not one)."""
        from crossbar import HardwareSpec, HardwareSpecError

        try:
            return HardwareSpec.from_dict(self.spec)
        except HardwareSpecError as exc:
            raise ConfigError(f"hardware_aware spec: {exc}") from None

    def validate(self) -> "HardwareAwareConfig":
        if isinstance(self.redraw, bool) or not isinstance(self.redraw, int) or self.redraw < 1:
            raise ConfigError(f"hardware_aware redraw must be a whole number of episodes >= 1, got {self.redraw!r}")
        w = self.digital_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ConfigError(f"hardware_aware digital_weight must be a finite number >= 0, got {w!r}")
        if self.spec is not None:
            spec = self.hardware_spec()
            if not spec.controller_analog:
                raise ConfigError(f"hardware_aware spec: analog must be 'controller' or 'all' (the controller is "
                                  f"what trains on the chip), got {spec.analog!r}")
        return self


#: ``--augment``: rotation and shear up to 10 degrees, scale within 10 %, shifts up to 2 pixels
AUGMENT_DEFAULTS = AugmentConfig(rotation=10.0, shear=10.0, scale=0.1, translate=2.0)


@dataclass
class ModelConfig:
    """The controller architecture (what a checkpoint must match to load)."""

    controller: str = "fp"
    input_channel: int = 1
    feature_dim: int = 512
    image_size: int = 32
    rotation_update: int = 1
    a32: bool = True

    def validate(self) -> "ModelConfig":
        _choice("controller", self.controller, CONTROLLERS)
        _positive("input_channel", self.input_channel)
        _positive("feature_dim", self.feature_dim)
        _positive("rotation_update", self.rotation_update)
        if self.image_size != 32:
            raise ConfigError(
                f"image_size {self.image_size} is not supported; the controller expects 32x32 images"
            )
        return self


@dataclass
class EpisodeOptions:
    """The seed's m-way n-shot options (names follow the seed's ``main.py``)."""

    class_num: int = 20
    num_shot: int = 5
    pool_query_train: int = 10
    pool_val_train: int = 5
    batch_size_train: int = 5
    val_num_train: int = 3
    pool_query_test: int = 15
    batch_size_test: int = 5
    split: str = "seed"
    #: image data set: "omniglot" or "mnist" (batmann.data.mnist: one split, 20 training images per digit)
    dataset: str = "omniglot"
    #: Lake's protocol: every class of an episode from one alphabet; supports and queries by
    #: different drawers, the same ones for every class (batmann.data.episodes)
    within_alphabet: bool = False
    distinct_drawers: bool = False

    def validate(self) -> "EpisodeOptions":
        _choice("split", self.split, SPLITS)
        _choice("dataset", self.dataset, DATASETS)
        if self.dataset == "mnist" and (self.split != "seed" or self.within_alphabet):
            raise ConfigError("MNIST has one split (each digit's first 20 images train, the rest test) and no "
                              f"alphabets; split {self.split!r} / within_alphabet {self.within_alphabet} do not apply")
        for name in ("within_alphabet", "distinct_drawers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false (got {getattr(self, name)!r})")
        for name in ("class_num", "num_shot", "batch_size_train", "batch_size_test",
                     "pool_query_train", "pool_query_test"):
            _positive(name, getattr(self, name))
        for name in ("pool_val_train", "val_num_train"):
            _positive(name, getattr(self, name), minimum=0)
        if self.class_num < 2:
            raise ConfigError(f"class_num must be >= 2 (got {self.class_num})")
        # the seed's rules (and m <= characters in the split) are checked by the data layer
        from batmann.data.episodes import validate_seed_options

        validate_seed_options(
            num_shot=self.num_shot,
            pool_query_train=self.pool_query_train,
            pool_val_train=self.pool_val_train,
            batch_size_train=self.batch_size_train,
            val_num_train=self.val_num_train,
            pool_query_test=self.pool_query_test,
            batch_size_test=self.batch_size_test,
            class_num=self.class_num,
            **_split_sizes(self.split),
        )
        return self

    @property
    def tag(self) -> str:
        return f"{self.class_num}w{self.num_shot}s"


def protocol_options(protocol: str, base: EpisodeOptions) -> EpisodeOptions:
    """``base`` with a fixed evaluation protocol's test episodes. ``lake`` (Lake et al., Science
    2015): the lake split's evaluation alphabets, 20-way 1-shot with one query per class, all 20
    characters from one alphabet, the supports by one drawer and the queries by another."""
    from batmann.options import PROTOCOLS

    _choice("protocol", protocol, PROTOCOLS)
    return dataclasses.replace(base, split="lake", class_num=20, num_shot=1, batch_size_test=1, pool_query_test=19,
                               within_alphabet=True, distinct_drawers=True)


def trained_for_protocol(opts: EpisodeOptions) -> str | None:
    """The fixed protocol (:func:`protocol_options`) whose kind of episode ``opts`` trains on:
    ``lake`` for lake-split 20-way 1-shot episodes within one alphabet by distinct drawers; else
    None."""
    lake = protocol_options("lake", opts)
    same = all(getattr(opts, k) == getattr(lake, k)
               for k in ("split", "class_num", "num_shot", "within_alphabet", "distinct_drawers"))
    return "lake" if same else None


def _split_sizes(split: str) -> dict[str, int]:
    """Number of train/test characters in each split (fixed by the data set)."""
    return {"seed": {"n_train_chars": 964, "n_test_chars": 659},
            "lake": {"n_train_chars": 964, "n_test_chars": 659}}[split]


@dataclass
class TrainConfig:
    """Everything ``batmann train`` needs; saved with every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    episodes: EpisodeOptions = field(default_factory=EpisodeOptions)
    train_episode: int = 10000
    log_interval: int = 100
    val_episode: int = 250
    val_interval: int = 500
    test_episode: int = 1000
    checkpoint_interval: int = 100
    learning_rate: float = 1e-4
    lr_step: int = 100000
    lr_gamma: float = 0.5
    sim_cal: str = "cos_softabs"
    loss: str = "ce"  # "ce": the seed's cross-entropy over the class attention; "nll": -log of it
    keys: str = "bipolar"
    precision: str = "auto"
    # compiled (TorchInductor) element-wise kernels of the binarized layers' training path:
    # "auto" = on for XNOR/RBNN controllers on a CPU with a C++ compiler (see effective_compile)
    compile: str = "auto"
    seed: int = 0
    device: str = "auto"
    init_from: str | None = None  # checkpoint whose weights start the run (fine-tuning)
    # key format of the *training* similarity: "real" (the seed), or "bipolar"/"binary": queries
    # and keys quantised as at inference, with a straight-through gradient
    train_keys: str = "real"
    # with train_keys bipolar/binary: the straight-through gradient passes only where
    # |feature| <= ste_clip (hardtanh STE); 0 = everywhere (identity, the only STE before 2026-11-27)
    ste_clip: float = 1.0
    freeze: list[str] = field(default_factory=list)  # controller layers kept fixed (FREEZABLE)
    # bit-reproducible kernels (one intra-op thread, deterministic oneDNN/cuDNN; see
    # batmann.utils.determinism): the same run, resumed or not, gives the same weights
    deterministic: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training images only
    hardware_aware: HardwareAwareConfig = field(default_factory=HardwareAwareConfig)  # chip in the loop

    def validate(self) -> "TrainConfig":
        self.model.validate()
        self.episodes.validate()
        self.augment.validate()
        self.hardware_aware.validate()
        _choice("sim_cal", self.sim_cal, SIM_CALS)
        _choice("loss", self.loss, LOSSES)
        if self.loss == "nll" and self.sim_cal != "cos_softabs":
            raise ConfigError(f"loss 'nll' needs sim_cal 'cos_softabs', whose class attention is a "
                              f"probability distribution (got sim_cal {self.sim_cal!r})")
        _choice("keys", self.keys, KEY_MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile", self.compile, COMPILE_MODES)
        _positive("train_episode", self.train_episode)
        for name in ("log_interval", "val_interval", "checkpoint_interval", "lr_step"):
            _positive(name, getattr(self, name))
        for name in ("val_episode", "test_episode"):
            _positive(name, getattr(self, name), minimum=0)
        if not (self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be > 0 (got {self.learning_rate!r})")
        if not (0 < self.lr_gamma <= 1):
            raise ConfigError(f"lr_gamma must be in (0, 1] (got {self.lr_gamma!r})")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from.strip()):
            raise ConfigError(f"init_from must be a checkpoint name or path (got {self.init_from!r})")
        _choice("train_keys", self.train_keys, KEY_MODES)
        if isinstance(self.ste_clip, bool) or not isinstance(self.ste_clip, (int, float)) \
                or not math.isfinite(self.ste_clip) or self.ste_clip < 0:
            raise ConfigError(f"ste_clip must be a finite number >= 0, 0 = identity (got {self.ste_clip!r})")
        if not isinstance(self.deterministic, bool):
            raise ConfigError(f"deterministic must be true or false (got {self.deterministic!r})")
        self.freeze = normalize_freeze(self.freeze)
        if self.freeze:
            from batmann.models.controller import controller_layer_types

            types = controller_layer_types(self.model.controller)
            rbnn = [n for n in self.freeze if types["fc1" if n == "fc1" else f"features.{n}"].startswith("Rbnn")]
            if rbnn:
                raise ConfigError(f"freeze: {','.join(rbnn)} of a {self.model.controller} controller are RBNN "
                                  "layers, whose rotations and weight signs change every episode; they cannot "
                                  "be frozen")
        if self.freeze and self.hardware_aware.enabled:
            raise ConfigError("hardware_aware cannot be combined with freeze: the frozen layers' cached outputs "
                              "would be digital, not the chip's")
        if self.freeze and self.augment.enabled:
            raise ConfigError("augment cannot be combined with freeze: the frozen layers' cached outputs are "
                              "those of the images as drawn")
        if self.val_episode > 0 and self.episodes.val_num_train == 0:
            raise ConfigError("val_episode > 0 needs val_num_train >= 1 (validation queries per class)")
        return self

    @property
    def effective_precision(self) -> str:
        """``auto``: bf16 autocast for the full-precision controller where the device runs bf16
        natively (measured about 2x faster per training episode on an AMX CPU; emulated bf16 on
        an AVX2-only CPU trained 14x and tested 30x slower than fp32), else fp32. fp32 for
        binarized ones: bf16 autocast flips the signs of binarized activations (RBNN), and
        whether the bf16 gradients of ``bf16`` XNOR training (exact forward, see
        :attr:`gradient_dtype`) train as well as fp32 is still being measured
        (docs/performance.md)."""
        if self.precision != "auto":
            return self.precision
        if self.model.controller != "fp":
            return "fp32"
        from batmann.utils.device import has_fast_bf16, resolve_device

        return "bf16" if has_fast_bf16(resolve_device(self.device)) else "fp32"

    @property
    def effective_compile(self) -> bool:
        """Whether training runs the compiled element-wise kernels (:mod:`batmann.models.fused`):
        ``on``/``off`` as asked; ``auto``: on for a binarized controller (the fp controller has no
        such kernels) on a CPU where a C++ compiler is found, unless the environment sets
        ``BATMANN_COMPILE=0``. Compiling cost about 13 s once per machine (cached on
        disk by TorchInductor), then XNOR/RBNN training steps run faster (docs/performance.md)."""
        if self.compile != "auto":
            return self.compile == "on"
        import os

        from batmann.models.fused import compiler_available
        from batmann.utils.device import resolve_device

        return (self.model.controller != "fp" and os.environ.get("BATMANN_COMPILE", "1") != "0"
                and resolve_device(self.device).type == "cpu" and compiler_available())

    @property
    def autocast_bf16(self) -> bool:
        """Whether the controller runs under bf16 autocast: bf16 precision for an fp or RBNN
        controller. An XNOR controller (``xnor``, ``xnor-binary-fc``) in bf16 keeps an exact
        float32 forward instead (see :attr:`gradient_dtype`)."""
        return self.effective_precision == "bf16" and not self.model.controller.startswith("xnor")

    @property
    def gradient_dtype(self):
        """``torch.bfloat16`` for an XNOR controller in bf16: its +-1 x +-1 layers compute the
        forward exactly (the float32 function, bit for bit) and their two gradient products in
        bf16 (:func:`batmann.models.layers.set_gradient_dtype`); else ``None`` (float32 autograd)."""
        if self.model.controller.startswith("xnor") and self.effective_precision == "bf16":
            import torch

            return torch.bfloat16
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from :meth:`to_dict`'s output; unknown keys are refused."""
        try:
            model = ModelConfig(**data.get("model", {}))
            episodes = EpisodeOptions(**data.get("episodes", {}))
            augment = AugmentConfig(**(data.get("augment") or {}))
            hwa = HardwareAwareConfig(**(data.get("hardware_aware") or {}))
            rest = {k: v for k, v in fill_legacy(data).items()
                    if k not in ("model", "episodes", "augment", "hardware_aware")}
            return cls(model=model, episodes=episodes, augment=augment, hardware_aware=hwa, **rest)
        except TypeError as exc:
            raise ConfigError(f"bad training configuration: {exc}") from None
