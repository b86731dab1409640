"""``render_mode="rgb_array"``: the env's text drawn in an RGB image (for video recorders and SB3's
``make_vec_env``, which asks every env for ``rgb_array``)."""

from __future__ import annotations

import textwrap

import numpy as np

__all__ = ["render_text_image"]

#: Image size (height, width) in pixels, and the characters per line and lines that fit in it.
IMAGE_SHAPE = (256, 512)
_COLUMNS, _LINES, _LINE_HEIGHT, _MARGIN = 80, 22, 11, 6


def render_text_image(text: str) -> np.ndarray:
    """``text`` wrapped and drawn black on white: a ``(256, 512, 3)`` uint8 array. The newest text is kept
    when it does not fit (the first lines are dropped)."""
    from PIL import Image, ImageDraw  # Pillow comes with matplotlib, a core dependency

    lines = [line for paragraph in text.splitlines() or [""]
             for line in (textwrap.wrap(paragraph, _COLUMNS) or [""])][-_LINES:]
    image = Image.new("RGB", (IMAGE_SHAPE[1], IMAGE_SHAPE[0]), "white")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        draw.text((_MARGIN, _MARGIN + row * _LINE_HEIGHT), line.encode("latin-1", "replace").decode("latin-1"),
                  fill="black")
    return np.asarray(image, dtype=np.uint8)
