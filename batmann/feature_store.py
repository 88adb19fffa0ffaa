"""Digital features on disk: computed once per checkpoint and image set, reused by every study.

A fixed (eval-mode) controller maps each (image, rotation) to the same feature vector, so the
features of a checkpoint are a property of its weights and of the images. They live in
``$BATMANN_HOME/features/<checkpoint sha256[:16]>-<image cache sha256[:16]>.safetensors``
(tensors ``ids`` (n,) int64 and ``features`` (n, d) float32; an id is ``image_index * 4 +
rotation / 90``, as :func:`batmann.evaluate.image_ids`). Writes merge with what is on disk and
replace the file atomically, so two processes filling the same store lose nothing but time.

Features are computed in fixed chunks of the sorted ids (:data:`CHUNK` images, batches of
:data:`BATCH`) on one thread (:func:`batmann.utils.determinism.deterministic_kernels`), so the
same ids give the same bits in any process, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from batmann.utils.paths import batmann_home

CHUNK = 256
BATCH = 64


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_digest(cache) -> str:
    """sha256 (hex) identifying an image cache: its manifest, else its image bytes."""
    manifest = getattr(cache, "manifest", None)
    if manifest:
        body = json.dumps(manifest, sort_keys=True).encode()
    else:
        body = np.ascontiguousarray(cache.images).tobytes()
    return hashlib.sha256(body).hexdigest()


def images_for_ids(cache, ids: Iterable[int]) -> torch.Tensor:
    """The normalised images (B, 1, S, S) float32 for image ids (``index * 4 + rotation / 90``)."""
    from batmann.data.images import normalise_uint8

    ids = np.asarray(list(ids), dtype=np.int64)
    lut = normalise_uint8(torch.arange(256, dtype=torch.uint8)).numpy()
    out = np.empty((ids.size,) + cache.images.shape[1:], dtype=np.float32)
    for rot in range(4):
        sel = np.nonzero(ids % 4 == rot)[0]
        if sel.size:
            imgs = cache.images[ids[sel] // 4]
            out[sel] = lut[np.rot90(imgs, rot, axes=(1, 2)) if rot else imgs]
    return torch.from_numpy(out).unsqueeze(1)


@torch.no_grad()
def compute_features(model: torch.nn.Module, cache, ids: Iterable[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Features (n, d) float32 of ``ids`` (in the given order) by ``model``, in batches of
    :data:`BATCH` inside ``deterministic_kernels`` (the same bits on any thread count); returned
    on the CPU."""
    from batmann.utils.determinism import deterministic_kernels

    ids = list(ids)
    model = model.eval()
    outs = []
    with deterministic_kernels(device):
        for i in range(0, len(ids), BATCH):
            x = images_for_ids(cache, ids[i:i + BATCH]).to(device)
            outs.append(model(x).float().cpu())
    return torch.cat(outs) if outs else torch.zeros((0, 0))


def chunks(ids: Iterable[int]) -> list[list[int]]:
    """Sorted unique ``ids`` cut into the fixed chunks the features are computed in."""
    s = sorted(set(int(i) for i in ids))
    return [s[i:i + CHUNK] for i in range(0, len(s), CHUNK)]


class FeatureStore:
    """The on-disk features of one checkpoint file on one image cache.

    ``variant`` names features computed another way, kept in their own file: the study's are
    computed as above (no variant); ``batmann evaluate`` stores the features it computed in its
    episode batches with all threads, per precision and device kind (``eval-fp32-cpu``, ...;
    see :func:`evaluation_store`).
    """

    def __init__(self, checkpoint_digest: str, data_digest: str, home: str | Path | None = None,
                 variant: str | None = None):
        root = Path(home) if home is not None else batmann_home()
        tail = f"-{variant}" if variant else ""
        self.path = root / "features" / f"{checkpoint_digest[:16]}-{data_digest[:16]}{tail}.safetensors"

    @classmethod
    def for_checkpoint(cls, checkpoint_path: str | Path, cache, home: str | Path | None = None,
                       variant: str | None = None) -> "FeatureStore":
        return cls(file_digest(checkpoint_path), cache_digest(cache), home, variant)

    def load(self) -> dict[int, torch.Tensor]:
        """id -> feature row (empty when nothing is stored or the file is unreadable)."""
        if not self.path.is_file():
            return {}
        from safetensors.torch import load_file

        try:
            t = load_file(str(self.path))
        except Exception:  # a damaged file is recomputed, never trusted
            return {}
        return dict(zip(t["ids"].tolist(), t["features"]))

    def save(self, new: dict[int, torch.Tensor]) -> None:
        """Merge ``new`` with what is stored (stored rows win) and write atomically."""
        if not new:
            return
        from safetensors.torch import save_file

        from batmann.utils.atomic import atomic_path

        merged = {**new, **self.load()}
        ids = sorted(merged)
        feats = torch.stack([merged[i].float().cpu() for i in ids]).contiguous()
        with atomic_path(self.path) as tmp:
            save_file({"ids": torch.tensor(ids, dtype=torch.int64), "features": feats}, str(tmp))


def evaluation_store(checkpoint_path: str | Path, cache, precision: str, device: torch.device | str,
                     home: str | Path | None = None) -> FeatureStore:
    """The store of ``batmann evaluate``'s features of a checkpoint file on an image cache, computed
    in ``precision`` (``fp32`` or ``bf16``) on ``device``'s kind. A later evaluation reuses the
    stored rows as they are, so rerunning an evaluation reproduces it bit for bit; an evaluation
    that batches the images differently would have computed them to float rounding of these
    (docs/performance.md#feature-cache)."""
    kind = torch.device(device).type
    return FeatureStore.for_checkpoint(checkpoint_path, cache, home, variant=f"eval-{precision}-{kind}")
