"""Tiny Omniglot-shaped archives for the data tests (not collected: no test_ prefix)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from batmann.data.omniglot import Counts


def png_bytes(seed: int, size: int = 12) -> bytes:
    """A small 1-bit PNG, different for every ``seed``."""
    rng = np.random.default_rng(seed)
    pixels = np.where(rng.random((size, size)) < 0.2, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_omniglot_zip(path: Path, which: str, alphabets: int = 2, characters: int = 2,
                      images: int = 3, start: int = 0) -> Counts:
    """Write ``images_<which>.zip`` laid out like the official archive; returns its counts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    top = f"images_{which}"
    number = start
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/", b"")
        for a in range(alphabets):
            for c in range(characters):
                number += 1
                folder = f"{top}/{which.title()}_Alphabet_{a}/character{c + 1:02d}"
                for d in range(images):
                    zf.writestr(f"{folder}/{number:04d}_{d + 1:02d}.png", png_bytes(number * 100 + d))
    return Counts(alphabets, alphabets * characters, alphabets * characters * images)


def make_source(folder: Path, **kw) -> dict[str, Counts]:
    """A source folder with both tiny archives; returns the expected counts per set."""
    bg = make_omniglot_zip(folder / "images_background.zip", "background", **kw)
    ev = make_omniglot_zip(folder / "images_evaluation.zip", "evaluation", start=500, **kw)
    return {"background": bg, "evaluation": ev}


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (relative paths), to assert that nothing was left behind."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
