"""Few-shot classification of your own images with a trained checkpoint.

The support folder holds one sub-folder per class with that class's shot images; the query
folder holds the images to classify. Images of any size or mode are converted exactly as in
training (greyscale, LANCZOS resize to 32x32, normalised with the seed's mean and std).
"""

from __future__ import annotations

from pathlib import Path

import torch

from batmann.checkpoint import Checkpoint, load_checkpoint
from batmann.errors import DataError
from batmann.evaluate import DigitalSystem
from batmann.memory import class_logits
from batmann.utils.device import resolve_device

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _load(paths: list[Path], size: int, device: torch.device) -> torch.Tensor:
    import numpy as np

    from batmann.data import images_to_tensor, load_image_file

    arrays = [load_image_file(p, size) for p in paths]
    return images_to_tensor(np.stack(arrays), device)


def classify_folders(checkpoint: str | Path | Checkpoint, support_dir: str | Path, query_dir: str | Path,
                     keys: str | None = None, device: str = "auto") -> dict[str, str]:
    """Predict a class (a support sub-folder name) for every image in ``query_dir``.

    Returns ``{query file name: class name}``.
    """
    support_dir, query_dir = Path(support_dir), Path(query_dir)
    for d, what in ((support_dir, "support"), (query_dir, "query")):
        if not d.is_dir():
            raise DataError(f"{what} folder {d} does not exist")
    classes = sorted(p for p in support_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"support folder {support_dir} must hold at least 2 class sub-folders (found {len(classes)})")
    support_paths: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        imgs = _images_in(cls)
        if not imgs:
            raise DataError(f"class folder {cls} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        support_paths += imgs
        labels += [label] * len(imgs)
    query_paths = _images_in(query_dir)
    if not query_paths:
        raise DataError(f"query folder {query_dir} holds no images")
    dev = resolve_device(device)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, dev)
    size = ckpt.config.model.image_size
    system = DigitalSystem(ckpt.model.to(dev), keys=keys or ckpt.config.keys, cache_features=False)
    system.write(system.features(_load(support_paths, size, dev)))
    sims = system.similarities(system.features(_load(query_paths, size, dev)))
    logits = class_logits(sims, torch.tensor(labels, device=sims.device), len(classes))
    pred = logits.argmax(1).tolist()
    return {p.name: classes[i].name for p, i in zip(query_paths, pred)}
