"""Checkpoints: weights in safetensors, configuration and provenance as JSON. Never pickles.

A checkpoint is one ``NAME.safetensors`` file whose header metadata holds the JSON training
configuration (``config``) and provenance (``provenance``); a ``NAME.json`` copy of both is
written beside it for people and listings. The safetensors file alone is enough to load.

Training state for resume (``last.safetensors`` in a run folder) uses the same container:
model tensors under ``model.``, optimizer tensors under ``optim.``, generator states under
``rng.``, and the scalar state (episode counter, best validation accuracy, optimizer and
scheduler settings) in the metadata. Every file is written atomically (temp file + rename),
so a run killed with SIGKILL leaves either the previous file or the new one, never half.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from batmann.config import TrainConfig, fill_legacy
from batmann.errors import CheckpointError, ConfigError
from batmann.utils.atomic import atomic_path, atomic_write_json

FORMAT = "batmann-checkpoint/1"
STATE_FORMAT = "batmann-train-state/1"
SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode), its configuration and provenance."""

    model: torch.nn.Module
    config: TrainConfig
    provenance: dict[str, Any]
    path: Path

    def export_plain(self) -> torch.nn.Module:
        """The controller as plain ``nn`` layers (what ``crossbar.convert`` maps onto crossbars)."""
        return self.model.export_plain()

    def key_codec(self):
        """The checkpoint's inference key format as a :class:`batmann.memory.KeyCodec`."""
        from batmann.memory import KeyCodec

        return KeyCodec(self.config.keys)


def shipped_checkpoints() -> dict[str, Path]:
    """Short name -> path of every checkpoint shipped inside the package."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.safetensors"))}


def resolve_checkpoint(spec: str | Path) -> Path:
    """A short name (``20w5s-binary``), a ``.safetensors`` file, or a run folder -> file path."""
    path = Path(spec)
    shipped = shipped_checkpoints()
    if str(spec) in shipped and not path.exists():
        return shipped[str(spec)]
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"folder {spec} holds no best.safetensors or last.safetensors")
    if path.is_file():
        return path
    names = ", ".join(shipped) or "none shipped yet"
    raise CheckpointError(f"checkpoint {spec!r} is neither a file, a run folder nor a shipped name ({names})")


def _meta_json(meta: dict[str, str], key: str, path: Path) -> Any:
    if key not in meta:
        raise CheckpointError(f"{path} has no '{key}' metadata; not a batmann checkpoint")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has corrupt '{key}' metadata") from None


def read_safetensors(path: str | Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor (none with ``tensors=False``: the header only) and the header metadata
    of ``path``; one-line errors for bad files."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if tensors else {}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt: {first})") from None
    return tensors, meta


def build_model(config: TrainConfig) -> torch.nn.Module:
    """The controller described by ``config.model`` (fresh weights)."""
    from batmann.models import build_controller

    from batmann.models.layers import set_gradient_dtype

    m = config.model
    model = build_controller(m.controller, input_channel=m.input_channel, feature_dim=m.feature_dim,
                             rotation_update=m.rotation_update, a32=m.a32)
    return set_gradient_dtype(model, config.gradient_dtype)


def load_state_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], path: Path,
                    description: str) -> None:
    """Copy ``tensors`` into ``model``; a missing, extra or mis-shaped tensor is a one-line error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise CheckpointError(f"{path} has tensor '{extra[0]}' that {description} does not have; "
                              "it is a checkpoint for another architecture")
    if missing:
        raise CheckpointError(f"{path} lacks tensor '{missing[0]}' needed by {description}"
                              f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: tensor '{k}' has shape {tuple(tensors[k].shape)} but "
                                  f"{description} expects {tuple(v.shape)}; it is a checkpoint for another architecture")
    model.load_state_dict({k: tensors[k].to(v.dtype) for k, v in expected.items()})


def describe(config: TrainConfig) -> str:
    m = config.model
    return f"controller {m.controller} (feature_dim {m.feature_dim}, input_channel {m.input_channel})"


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: TrainConfig,
                    provenance: dict[str, Any], half: bool = False) -> Path:
    """Write ``model``'s weights with ``config`` and ``provenance`` to ``path`` (+ ``.json``).

    ``half`` stores floating tensors as fp16 (the loader casts back to the model's dtype).
    """
    path = Path(path)
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu").contiguous()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v
    meta = {"format": FORMAT, "config": json.dumps(config.to_dict()), "provenance": json.dumps(provenance)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    atomic_write_json(path.with_suffix(".json"), {"format": FORMAT, "config": config.to_dict(),
                                                  "provenance": provenance})
    return path


def load_checkpoint(spec: str | Path, device: torch.device | str = "cpu",
                    expect: TrainConfig | None = None) -> Checkpoint:
    """Load a checkpoint by short name or path; the model comes back in eval mode on ``device``.

    ``expect``, when given, must describe the same architecture, else a one-line error.
    """
    path = resolve_checkpoint(spec)
    tensors, meta = read_safetensors(path)
    fmt = meta.get("format")
    if fmt == STATE_FORMAT:
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    elif fmt != FORMAT:
        raise CheckpointError(f"{path} is not a batmann checkpoint (format {fmt!r})")
    try:
        config = TrainConfig.from_dict(_meta_json(meta, "config", path)).validate()
    except ConfigError as exc:
        raise CheckpointError(f"{path} has an invalid configuration: {exc}") from None
    if expect is not None and expect.model != config.model:
        raise CheckpointError(f"{path} is for {describe(config)}, not {describe(expect)}")
    model = build_model(config)
    load_state_into(model, tensors, path, describe(config))
    provenance = _meta_json(meta, "provenance", path) if "provenance" in meta else {}
    return Checkpoint(model=model.to(device).eval(), config=config, provenance=provenance, path=path)


# ----------------------------------------------------------------------------- train state
def _python_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(data: list) -> tuple:
    return (data[0], tuple(data[1]), data[2])


def save_train_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, config: TrainConfig, scalars: dict[str, Any]) -> Path:
    """Everything needed to resume training exactly, in one atomically written file."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().to("cpu").contiguous()
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = t.detach().to("cpu").contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {
        "format": STATE_FORMAT,
        "config": json.dumps(config.to_dict()),
        "scalars": json.dumps(scalars),
        "optim_groups": json.dumps(opt["param_groups"]),
        "scheduler": json.dumps(scheduler.state_dict()),
        "rng_python": json.dumps(_python_rng_to_json(random.getstate())),
        "rng_numpy": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_train_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any, config: TrainConfig) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and generators from :func:`save_train_state`.

    Returns the saved scalars (episode counter, best accuracy, ...). The saved configuration
    must equal ``config`` except for ``train_episode`` (a run may be extended) and the kernel
    choices (``deterministic``, ``compile``: they change the last bits, not what is trained), else
    a one-line error names the first differing option. Options newer than the saved state, nested
    ones included, count as their defaults.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a batmann training state (format {meta.get('format')!r})")
    saved = fill_legacy(_meta_json(meta, "config", path))
    now = config.to_dict()
    defaults = TrainConfig().to_dict()  # options newer than the saved state had their defaults
    for key in now:
        if key in ("train_episode", "device", "test_episode", "deterministic", "compile"):
            continue  # kernels and bookkeeping, not what is trained
        was = saved.get(key, defaults[key])
        if isinstance(was, dict) and isinstance(defaults[key], dict):  # nested options newer than the state
            was = {**defaults[key], **was}
        if was != now[key]:
            raise CheckpointError(f"cannot resume {path}: option {key} was {was!r}, now {now[key]!r}")
    load_state_into(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path,
                    describe(config))
    groups = _meta_json(meta, "optim_groups", path)
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict(_meta_json(meta, "scheduler", path))
    torch.set_rng_state(tensors["rng.torch"])
    name, pos, has_gauss, cached = _meta_json(meta, "rng_numpy", path)
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_python_rng_from_json(_meta_json(meta, "rng_python", path)))
    return _meta_json(meta, "scalars", path)
