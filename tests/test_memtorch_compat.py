"""Importing MemTorch without torchvision: the shim is used only when the real one cannot import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crossbar import memtorch_compat as mc

REPO = Path(__file__).resolve().parents[1]
needs_memtorch = pytest.mark.skipif(not mc.memtorch_installed(), reason="MemTorch is not installed")


def test_shim_provides_what_memtorch_touches_and_each_raises_clearly():
    mods = mc.build_torchvision_shim()
    assert set(mods) == {"torchvision", "torchvision.datasets", "torchvision.datasets.utils", "torchvision.transforms"}
    utils = mods["torchvision.datasets.utils"]
    for name in ("download_and_extract_archive", "download_url", "extract_archive", "verify_str_arg"):
        with pytest.raises(mc.TorchvisionShimError, match=f"torchvision.datasets.utils.{name} is unavailable"):
            getattr(utils, name)("x")
    for mod, name in (("torchvision.datasets", "MNIST"), ("torchvision.transforms", "ToTensor")):
        with pytest.raises(mc.TorchvisionShimError):
            getattr(mods[mod], name)()
    assert mods["torchvision"].datasets.utils is utils
    assert all(getattr(m, mc.SHIM_ATTRIBUTE) for m in mods.values())


def test_a_shim_in_sys_modules_is_not_taken_for_the_real_torchvision(monkeypatch):
    for name, mod in mc.build_torchvision_shim().items():
        monkeypatch.setitem(sys.modules, name, mod)
    assert mc.real_torchvision_importable() is False


def _run(code: str, extra_path: str | None = None) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(REPO), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


PATCH_A_LINEAR = """
    import sys, torch
    from crossbar.memtorch_compat import import_memtorch
    memtorch = import_memtorch()
    from memtorch.mn.Module import patch_model
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(8, 4))
    m = patch_model(torch.nn.Sequential(torch.nn.Linear(8, 4)), memtorch.bh.memristor.VTEAM,
                    {"time_series_resolution": 1e-10}, module_parameters_to_patch=[torch.nn.Linear],
                    verbose=False)
    assert type(m[0]) is memtorch.mn.Linear, type(m[0])
    y = m(torch.randn(3, 8))
    assert y.shape == (3, 4) and torch.isfinite(y).all()
    print("shim", memtorch.__batmann_torchvision_shim__)
    print("left", any(n == "torchvision" or n.startswith("torchvision.") for n in sys.modules))
    print("utils_tv", getattr(memtorch.utils.torchvision, "__file__", None))
"""


@pytest.mark.memtorch
@needs_memtorch
def test_memtorch_imports_through_the_shim_and_patches_a_linear():
    if mc.real_torchvision_importable():
        pytest.skip("a working torchvision is installed: the shim is not used here")
    out = _run(PATCH_A_LINEAR)
    assert "shim True" in out
    assert "left False" in out  # the stand-in was taken out of sys.modules again


@pytest.mark.memtorch
@needs_memtorch
def test_a_working_torchvision_is_never_shadowed(tmp_path):
    pkg = tmp_path / "torchvision"
    (pkg / "datasets").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import datasets, transforms\n")
    (pkg / "transforms.py").write_text("class Compose: pass\nclass ToTensor: pass\n")
    (pkg / "datasets" / "__init__.py").write_text("from . import utils\nclass MNIST: pass\nclass CIFAR10: pass\n")
    (pkg / "datasets" / "utils.py").write_text(
        "def download_and_extract_archive(): pass\ndef download_url(): pass\n"
        "def extract_archive(): pass\ndef verify_str_arg(): pass\n")
    out = _run(PATCH_A_LINEAR, extra_path=str(tmp_path))
    assert "shim False" in out
    assert f"utils_tv {pkg / '__init__.py'}" in out  # memtorch got the real (here: stand-in real) one


def test_missing_memtorch_gives_install_hint(monkeypatch):
    monkeypatch.delitem(sys.modules, "memtorch", raising=False)
    monkeypatch.setattr(mc, "memtorch_installed", lambda: False)
    with pytest.raises(mc.MemTorchUnavailableError, match="setup_env.sh"):
        mc.import_memtorch()
    assert mc.memtorch_available() is False
