"""Draw an episode as a PNG: one row per class, its supports, a gap, then its queries.

Pixels come from the cache (uint8) with the episode's rotation applied, i.e. what the
controller sees before normalisation. PIL writes no time stamps, so the same episode gives the
same bytes.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from batmann.utils.atomic import atomic_write_bytes

PAD = 2          # pixels between images
GAP = 12         # pixels between the supports and the queries
MARGIN = 4
BACKGROUND = 255
SEPARATOR = 160  # grey line between supports and queries


def episode_picture(cache, episode, scale: int | None = None) -> Image.Image:
    """A grey PIL image of ``episode`` (supports left, queries right, one row per class)."""
    ways = episode.ways
    support = episode.support_index.numpy().reshape(ways, -1)
    query = episode.query_index.numpy().reshape(ways, -1)
    k = (int(episode.rotation) // 90) % 4
    s = cache.size
    if scale is None:
        scale = max(1, min(4, 64 // s)) if ways <= 20 else 1
    cell = s * scale
    n, q = support.shape[1], query.shape[1]
    width = 2 * MARGIN + (n + q) * cell + (n + q - 2) * PAD + GAP
    height = 2 * MARGIN + ways * cell + (ways - 1) * PAD
    canvas = np.full((height, width), BACKGROUND, dtype=np.uint8)
    sep_x = MARGIN + n * cell + (n - 1) * PAD + GAP // 2
    canvas[MARGIN:height - MARGIN, sep_x] = SEPARATOR
    for row in range(ways):
        y = MARGIN + row * (cell + PAD)
        for col, idx in enumerate(list(support[row]) + list(query[row])):
            x = MARGIN + col * (cell + PAD) + (GAP - PAD if col >= n else 0)
            tile = np.rot90(cache.images[int(idx)], k)
            if scale > 1:
                tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
            canvas[y:y + cell, x:x + cell] = tile
    return Image.fromarray(np.ascontiguousarray(canvas))


def episode_png_bytes(cache, episode, scale: int | None = None) -> bytes:
    """PNG bytes of :func:`episode_picture` (deterministic)."""
    buf = io.BytesIO()
    episode_picture(cache, episode, scale).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def save_episode_png(cache, episode, path: str | os.PathLike[str], scale: int | None = None) -> None:
    """Write the episode's picture to ``path`` atomically."""
    atomic_write_bytes(path, episode_png_bytes(cache, episode, scale))
