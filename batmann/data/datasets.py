"""Which image cache an episode configuration draws from: Omniglot (default) or MNIST."""

from __future__ import annotations

from batmann.errors import ConfigError
from batmann.options import DATASETS


def load_episode_images(dataset: str = "omniglot", size: int = 32, **omniglot_options):
    """The :class:`~batmann.data.cache.ImageCache` of ``dataset`` at ``size`` x ``size``:
    Omniglot through :func:`batmann.data.cache.load_image_cache` (``omniglot_options`` passed on),
    MNIST through :func:`batmann.data.mnist.load_mnist_cache`."""
    if dataset == "omniglot":
        from batmann.data.cache import load_image_cache

        return load_image_cache(size, **omniglot_options)
    if dataset == "mnist":
        from batmann.data.mnist import load_mnist_cache

        return load_mnist_cache(size)
    raise ConfigError(f"dataset {dataset!r} is not one of {', '.join(DATASETS)}")
