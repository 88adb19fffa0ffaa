"""Import MemTorch on a machine without a working torchvision (the one owner of that shim).

``memtorch.utils`` imports torchvision at import time, only for its MNIST/CIFAR-10 loaders
(``torchvision.datasets``, ``torchvision.transforms`` and four helpers from
``torchvision.datasets.utils``). PyPI's torchvision does not import beside the CPU torch wheel
used here, so ``import memtorch`` fails. :func:`import_memtorch`:

1. returns MemTorch at once if it is already imported;
2. tries the real torchvision: if it imports, MemTorch is imported normally and no shim is ever
   created (a working torchvision is never shadowed);
3. otherwise removes whatever the failed import left in ``sys.modules``, puts a stand-in
   ``torchvision`` package there *only while MemTorch is imported*, then takes it out again.
   MemTorch's own references to it stay; every stand-in callable raises
   :class:`TorchvisionShimError` naming what was called (only MemTorch's dataset loaders reach
   them, and this project does not use those).

If MemTorch itself is not installed, :class:`MemTorchUnavailableError` says how to install it.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings

SHIM_ATTRIBUTE = "__batmann_torchvision_shim__"

# Everything memtorch (1.1.6) touches at import or in memtorch.utils.
_DATASETS_UTILS_FUNCTIONS = ("download_and_extract_archive", "download_url", "extract_archive", "verify_str_arg")
_DATASETS_CLASSES = ("MNIST", "CIFAR10")
_TRANSFORMS_CLASSES = ("Compose", "ToTensor")

INSTALL_HINT = (
    "MemTorch is not installed: run scripts/setup_env.sh, or "
    "pip install --no-build-isolation --no-deps memtorch-cpu==1.1.6 (after torch; see README, Install)"
)


class MemTorchUnavailableError(ImportError):
    """MemTorch cannot be imported (not installed, or broken)."""


class TorchvisionShimError(RuntimeError):
    """A torchvision function was called through the import shim (the real one is unavailable)."""


def _unavailable(qualname: str):
    def stub(*args, **kwargs):
        raise TorchvisionShimError(
            f"{qualname} is unavailable: torchvision cannot be imported here and batmann-rram only "
            "provides a stand-in so that MemTorch imports (MemTorch's MNIST/CIFAR loaders do not work)"
        )

    stub.__name__ = qualname.rsplit(".", 1)[-1]
    stub.__qualname__ = qualname
    return stub


def build_torchvision_shim() -> dict[str, types.ModuleType]:
    """The stand-in modules, keyed by their ``sys.modules`` names."""
    tv = types.ModuleType("torchvision", "batmann-rram stand-in for torchvision (see crossbar.memtorch_compat)")
    datasets = types.ModuleType("torchvision.datasets")
    dutils = types.ModuleType("torchvision.datasets.utils")
    transforms = types.ModuleType("torchvision.transforms")
    for name in _DATASETS_UTILS_FUNCTIONS:
        setattr(dutils, name, _unavailable(f"torchvision.datasets.utils.{name}"))
    for name in _DATASETS_CLASSES:
        setattr(datasets, name, _unavailable(f"torchvision.datasets.{name}"))
    for name in _TRANSFORMS_CLASSES:
        setattr(transforms, name, _unavailable(f"torchvision.transforms.{name}"))
    datasets.utils = dutils
    tv.datasets = datasets
    tv.transforms = transforms
    tv.__version__ = "0.0.0+batmann-shim"
    mods = {"torchvision": tv, "torchvision.datasets": datasets,
            "torchvision.datasets.utils": dutils, "torchvision.transforms": transforms}
    for m in mods.values():
        setattr(m, SHIM_ATTRIBUTE, True)
    return mods


def _purge_torchvision() -> None:
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def real_torchvision_importable() -> bool:
    """True when the real torchvision imports (a stand-in already in sys.modules does not count)."""
    mod = sys.modules.get("torchvision")
    if mod is not None and getattr(mod, SHIM_ATTRIBUTE, False):
        return False
    try:
        importlib.import_module("torchvision")
        importlib.import_module("torchvision.datasets.utils")
        return True
    except Exception:  # ImportError, OSError (missing libtorch_cuda), RuntimeError (ABI), ...
        _purge_torchvision()
        return False


def memtorch_installed() -> bool:
    """True when a ``memtorch`` distribution is on the path (without importing it)."""
    import importlib.util

    return "memtorch" in sys.modules or importlib.util.find_spec("memtorch") is not None


def import_memtorch():
    """Return the ``memtorch`` module, importing it through the torchvision shim if needed."""
    if "memtorch" in sys.modules:
        return sys.modules["memtorch"]
    if not memtorch_installed():
        raise MemTorchUnavailableError(INSTALL_HINT)
    use_shim = not real_torchvision_importable()
    shim = build_torchvision_shim() if use_shim else {}
    sys.modules.update(shim)
    try:
        with warnings.catch_warnings():
            # MemTorch 1.1.6 imports numpy.core.numeric (deprecated in numpy 2).
            warnings.simplefilter("ignore", DeprecationWarning)
            memtorch = importlib.import_module("memtorch")
    except Exception as exc:
        for name in [n for n in sys.modules if n == "memtorch" or n.startswith("memtorch.")]:
            del sys.modules[name]
        raise MemTorchUnavailableError(f"MemTorch failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        for name, mod in shim.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    memtorch.__batmann_torchvision_shim__ = use_shim
    return memtorch


def memtorch_available() -> bool:
    """True when :func:`import_memtorch` succeeds."""
    try:
        import_memtorch()
        return True
    except MemTorchUnavailableError:
        return False
