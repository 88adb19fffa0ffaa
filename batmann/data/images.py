"""Single images: read and resize like the seed, and turn uint8 batches into controller input.

The seed reads every PNG with PIL, converts it to grey (``"L"``), resizes it to 32x32 with
LANCZOS and normalises ``x / 255`` with mean 0.92206 and standard deviation 0.08426
(``transforms.ToTensor`` then ``transforms.Normalize``). The cache and :func:`load_image_file`
do the resize; :func:`images_to_tensor` does the normalisation, in float32, in the same order.
"""

from __future__ import annotations

import os

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from batmann.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported on use, so `batmann data info` starts fast
    import torch

#: The seed's normalisation constants (``transforms.Normalize(mean=[0.92206], std=[0.08426])``).
NORM_MEAN = 0.92206
NORM_STD = 0.08426

#: Smallest and largest image side the cache and the loaders accept.
MIN_SIZE, MAX_SIZE = 4, 256


def check_size(size: int) -> int:
    """Return ``size`` if it is an allowed image side, else raise :class:`ConfigError`."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ConfigError(f"image size must be an integer (got {size!r})")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ConfigError(f"image size must be between {MIN_SIZE} and {MAX_SIZE} pixels (got {size})")
    return int(size)


def resize_image(image: Image.Image, size: int) -> np.ndarray:
    """Grey ``size`` x ``size`` uint8 array of a PIL image: the seed's convert("L") + LANCZOS.

    Transparent pixels are put on white first (Omniglot has none; user images may).
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    grey = image.convert("L").resize((size, size), resample=Image.Resampling.LANCZOS)
    return np.asarray(grey, dtype=np.uint8)


def load_image_file(path: str | os.PathLike[str], size: int = 32) -> np.ndarray:
    """Read an image file of any size and mode as a ``(size, size)`` uint8 array, 0 = black.

    Exactly the preprocessing of the cache, so a file drawn from Omniglot gives the cached pixels.
    """
    size = check_size(size)
    try:
        with Image.open(path) as image:
            return resize_image(image, size)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read image {path}: {reason}") from None


def images_to_tensor(images: "np.ndarray | torch.Tensor", device: "torch.device | str" = "cpu") -> "torch.Tensor":
    """uint8 images ``(B, S, S)`` (or one ``(S, S)``) -> float32 ``(B, 1, S, S)`` on ``device``,
    normalised exactly as in training: ``(x / 255 - NORM_MEAN) / NORM_STD``.

    The uint8 batch is moved to the device first, so only one byte per pixel crosses the bus.
    """
    import torch

    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (got {images.dtype})")
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise DataError(f"images must be uint8 (got {images.dtype})")
        tensor = images
    else:
        raise DataError(f"images must be a numpy array or a torch tensor (got {type(images).__name__})")
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[1] != tensor.shape[2]:
        raise DataError(f"images must have shape (B, S, S) (got {tuple(tensor.shape)})")
    tensor = tensor.to(device, non_blocking=True)
    return normalise_uint8(tensor).unsqueeze(1)


def normalise_uint8(tensor: "torch.Tensor") -> "torch.Tensor":
    """float32 copy of a uint8 tensor, ``(x / 255 - NORM_MEAN) / NORM_STD`` (the seed's order)."""
    import torch

    return tensor.to(torch.float32).div_(255.0).sub_(NORM_MEAN).div_(NORM_STD)
