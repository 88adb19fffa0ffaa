"""The preprocessed image cache: every Omniglot image resized once, loaded in milliseconds.

``HOME/omniglot/cache/<S>px/`` holds plain ``.npy`` files (loaded with ``allow_pickle=False``)
and ``manifest.json``:

- ``images.npy``: uint8 ``(N, S, S)``, grey, 0 = black ink on 255 = white (the PNGs' polarity),
  resized with PIL's LANCZOS exactly as the seed (``convert("L")``, ``resize((S, S))``);
- ``char_index.npy``, ``alphabet_index.npy``, ``drawer_index.npy`` (int64) and
  ``background.npy`` (bool), one entry per image;
- ``manifest.json``: format, size, counts, alphabet and character names, array shapes, and
  the markers of the extracted sets it was built from.

Order: the background set, then the evaluation set; within a set alphabets, characters and
files sorted by name. So characters 0..963 are the background characters and 964..1622 the
evaluation ones; ``character_names[c]`` is ``"ALPHABET/characterNN"``; a character's images
come in drawer order (``NNNN_DD.png``: ``drawer_index = DD - 1``). The folder is written to a
temporary folder and renamed into place, so a reader never sees half a cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import PIL
from PIL import Image

from batmann.data.images import check_size, resize_image
from batmann.data.omniglot import (SETS, Counts, fetch_omniglot, is_fetched, list_images, omniglot_dir,
                                   read_marker, set_dir)
from batmann.errors import DataError
from batmann.utils.atomic import atomic_directory

CACHE_FORMAT = 1
ARRAYS: dict[str, str] = {"images": "uint8", "char_index": "int64", "alphabet_index": "int64",
                          "drawer_index": "int64", "background": "bool"}
MANIFEST = "manifest.json"

Log = Callable[[str], None]


@dataclass
class ImageCache:
    """All images of both sets at one size, with their character, alphabet and drawer indices."""

    images: np.ndarray          # (N, S, S) uint8
    char_index: np.ndarray      # (N,) int64, 0..n_characters-1
    alphabet_index: np.ndarray  # (N,) int64, 0..n_alphabets-1
    drawer_index: np.ndarray    # (N,) int64, 0..19 for Omniglot (-1 if the name has none)
    background: np.ndarray      # (N,) bool: from images_background
    character_names: list[str]  # "ALPHABET/characterNN"
    alphabet_names: list[str]
    path: Path | None = None
    manifest: dict = field(default_factory=dict, repr=False)
    _tensors: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_characters(self) -> int:
        return len(self.character_names)

    @property
    def character_alphabet(self) -> np.ndarray:
        """(n_characters,) alphabet index of every character."""
        out = np.full(self.n_characters, -1, dtype=np.int64)
        out[self.char_index] = self.alphabet_index
        return out

    @property
    def character_background(self) -> np.ndarray:
        """(n_characters,) whether each character belongs to the background set."""
        out = np.zeros(self.n_characters, dtype=bool)
        out[self.char_index] = self.background
        return out

    def counts(self) -> dict[str, Counts]:
        """Alphabets, characters and images of the background and the evaluation set."""
        out = {}
        for which, mask in (("background", self.background), ("evaluation", ~self.background)):
            out[which] = Counts(alphabets=int(np.unique(self.alphabet_index[mask]).size),
                                characters=int(np.unique(self.char_index[mask]).size),
                                images=int(mask.sum()))
        return out

    def images_tensor(self, device="cpu"):
        """All images as one uint8 torch tensor on ``device`` (moved once, shared by samplers)."""
        import torch

        key = str(torch.device(device))
        if key not in self._tensors:
            images = self.images
            if not images.flags.writeable:
                images = np.array(images)
            self._tensors[key] = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        return self._tensors[key]


def cache_dir(size: int = 32, home: str | os.PathLike[str] | None = None) -> Path:
    """``HOME/omniglot/cache/<size>px``."""
    return omniglot_dir(home) / "cache" / f"{int(size)}px"


def _drawer(file_name: str) -> int:
    stem = file_name.rsplit(".", 1)[0]
    try:
        return int(stem.rsplit("_", 1)[1]) - 1
    except (IndexError, ValueError):
        return -1


def _source_markers(home: str | os.PathLike[str] | None) -> dict[str, dict | None]:
    out = {}
    for which in SETS:
        marker = read_marker(set_dir(which, home))
        out[which] = None if marker is None else {k: marker.get(k) for k in ("origin", "md5", "date", "counts")}
    return out


def build_image_cache(size: int = 32, home: str | os.PathLike[str] | None = None,
                      log: Log | None = None) -> Path:
    """Build ``HOME/omniglot/cache/<size>px`` from the extracted sets; returns its folder.

    The sets must be fetched (:func:`batmann.data.omniglot.fetch_omniglot`). An existing cache
    folder is replaced.
    """
    size = check_size(size)
    if not is_fetched(home):
        raise DataError(f"Omniglot is not fetched into {omniglot_dir(home)}; run `batmann data fetch`")
    start = time.perf_counter()
    (log or (lambda _m: None))(f"building the {size}x{size} image cache (once) ...")
    paths: list[Path] = []
    alphabet_names: list[str] = []
    alphabet_sets: list[str] = []
    character_names: list[str] = []
    char_idx, alpha_idx, drawer_idx, background = [], [], [], []
    counts = {}
    for which in SETS:
        root = set_dir(which, home)
        files = list_images(root)
        n_before = len(paths)
        alpha_before, char_before = len(alphabet_names), len(character_names)
        for rel in files:
            alphabet, character, name = rel.split("/")
            if not alphabet_names[alpha_before:] or alphabet_names[-1] != alphabet:
                alphabet_names.append(alphabet)
                alphabet_sets.append(which)
            key = f"{alphabet}/{character}"
            if not character_names[char_before:] or character_names[-1] != key:
                character_names.append(key)
            paths.append(root / rel)
            char_idx.append(len(character_names) - 1)
            alpha_idx.append(len(alphabet_names) - 1)
            drawer_idx.append(_drawer(name))
            background.append(which == "background")
        counts[which] = Counts(len(alphabet_names) - alpha_before, len(character_names) - char_before,
                               len(paths) - n_before)
        recorded = read_marker(root)["counts"]
        if counts[which].as_dict() != recorded:
            raise DataError(f"{root} now holds {counts[which]} but {Counts(**recorded)} were extracted; "
                            "delete it and run `batmann data fetch` again")
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                images[i] = resize_image(image, size)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read {path}: {exc}; delete {omniglot_dir(home)} and fetch again") from None
    arrays = {"images": images, "char_index": np.asarray(char_idx, dtype=np.int64),
              "alphabet_index": np.asarray(alpha_idx, dtype=np.int64),
              "drawer_index": np.asarray(drawer_idx, dtype=np.int64),
              "background": np.asarray(background, dtype=bool)}
    manifest = {
        "format": CACHE_FORMAT, "size": size, "resample": "LANCZOS", "mode": "L", "pillow": PIL.__version__,
        "counts": {w: c.as_dict() for w, c in counts.items()},
        "alphabets": alphabet_names, "alphabet_sets": alphabet_sets, "characters": character_names,
        "arrays": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in arrays.items()},
        "sources": _source_markers(home),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    target = cache_dir(size, home)
    if target.exists():
        shutil.rmtree(target)
    try:
        with atomic_directory(target) as tmp:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:
        if _load(target, size, home, mmap=True)[0] is None:  # not built by a concurrent process
            raise DataError(f"cannot write the image cache {target}: {exc}") from None
    return target


def _load(folder: Path, size: int, home, mmap: bool) -> tuple[ImageCache | None, str]:
    """(cache, "") or (None, why it cannot be used)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:
        return None, f"unreadable manifest ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT or manifest.get("size") != size:
        return None, "an older or different format"
    markers = _source_markers(home)
    if all(m is not None for m in markers.values()) and markers != manifest.get("sources"):
        return None, "built from an earlier extraction"
    arrays = {}
    try:
        for name, dtype in ARRAYS.items():
            array = np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)
            spec = manifest["arrays"][name]
            if str(array.dtype) != dtype or list(array.shape) != spec["shape"]:
                return None, f"{name}.npy does not match the manifest"
            arrays[name] = array
        cache = ImageCache(character_names=list(manifest["characters"]),
                           alphabet_names=list(manifest["alphabets"]), path=folder, manifest=manifest, **arrays)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    n = cache.n_images
    if cache.images.shape[1:] != (size, size) or any(a.shape != (n,) for a in
                                                     (cache.char_index, cache.alphabet_index,
                                                      cache.drawer_index, cache.background)):
        return None, "arrays of inconsistent shapes"
    return cache, ""


def load_image_cache(size: int = 32, source: str | os.PathLike[str] | None = None,
                     home: str | os.PathLike[str] | None = None, *, fetch: bool = True,
                     mmap: bool = False, log: Log | None = None) -> ImageCache:
    """The ``size`` x ``size`` image cache under ``home``; fetches and builds it when needed.

    ``source``: folder of archives for the fetch (see :func:`fetch_omniglot`). ``fetch=False``
    raises :class:`DataError` instead of fetching. ``mmap=True`` maps the arrays read-only
    instead of reading them. A cache that is missing, damaged, or older than the extracted
    data is rebuilt.
    """
    size = check_size(size)
    folder = cache_dir(size, home)
    cache, why = _load(folder, size, home, mmap)
    if cache is not None:
        return cache
    if not is_fetched(home):
        if not fetch:
            raise DataError(f"Omniglot is not fetched into {omniglot_dir(home)}; run `batmann data fetch` "
                            "(with --source DIR for a folder holding the two archives)")
        fetch_omniglot(home, source, log=log)
    if why != "missing" and log:
        log(f"the cache {folder} is {why}; rebuilding it")
    build_image_cache(size, home, log=log)
    cache, why = _load(folder, size, home, mmap)
    if cache is None:
        raise DataError(f"the image cache {folder} is {why} right after building it")
    return cache
