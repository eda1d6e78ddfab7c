"""8-bit fast paths of :func:`medfail.stress.registry.corrupt` for ``jpeg`` and ``pixelate``.

They apply when the image is ``uint8`` with the default range ``(0, 255)`` and give exactly the
general path's output (float32 ``[0, 1]`` kernels of :mod:`medfail.stress.corruptions`, back to
8 bits by ``rint``), without the float32 tensor, the channels-first copy and back:

* ``jpeg``: the general path quantises ``u / 255`` back to ``u`` (``rint(float32(u / 255) * 255)
  == u`` for every 8-bit ``u``) and returns ``d / 255`` of the decoded ``d``, which ``corrupt``
  rounds back to ``d``; so Pillow encodes the uint8 array itself and its decoded bytes are the
  result. Grey ``(H, W)`` is encoded as ``"L"``, ``(H, W, 3)`` as ``"RGB"``; other channel
  counts take the general path.
* ``pixelate``: the same float32 operations in the same order (``x = u / 255``; block sums over
  ``(a, b)`` offsets in row-major order; ÷ the real pixel count; clip to ``[0, 1]``; × 255;
  ``rint``) on the ``hb × wb`` block means only, then a uint8 nearest upsampling.

Every other corruption, and every other dtype or value range, takes the general path.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["FAST_UINT8", "jpeg_uint8", "pixelate_uint8"]

_F255 = np.float32(255.0)


def jpeg_uint8(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray | None:
    """JPEG round trip of an 8-bit ``(H, W)`` or ``(H, W, 3)`` image; ``None`` for other shapes."""
    if image.ndim == 2:
        mode = "L"
    elif image.ndim == 3 and image.shape[2] == 3:
        mode = "RGB"
    else:
        return None
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), mode=mode).save(
        buf, format="JPEG", quality=int(params["quality"]))
    buf.seek(0)
    with Image.open(buf) as decoded:
        if decoded.mode != mode:
            decoded = decoded.convert(mode)
        return np.asarray(decoded, dtype=np.uint8)


def pixelate_uint8(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Block mean of ``params["factor"]`` px (partial edge blocks: real pixels), nearest back."""
    f = int(params["factor"])
    h, w = image.shape[:2]
    hb, wb = -(-h // f), -(-w // f)
    x = image.astype(np.float32)
    x /= _F255
    if (h, w) != (hb * f, wb * f):
        padded = np.zeros((hb * f, wb * f, *image.shape[2:]), dtype=np.float32)
        padded[:h, :w] = x
        x = padded
    blocks = x.reshape(hb, f, wb, f, *image.shape[2:])
    sums = blocks[:, 0, :, 0].copy()
    for a in range(f):
        for b in range(f):
            if a or b:
                sums += blocks[:, a, :, b]
    rows = np.minimum(h - np.arange(hb) * f, f)
    cols = np.minimum(w - np.arange(wb) * f, f)
    count = (rows[:, None] * cols[None, :]).astype(np.float32)
    means = sums / (count if image.ndim == 2 else count[..., None])
    np.clip(means, 0.0, 1.0, out=means)
    means *= _F255
    np.clip(means, 0.0, _F255, out=means)
    q = np.rint(means, out=means).astype(np.uint8)
    up = np.repeat(np.repeat(q, f, axis=0), f, axis=1)
    return up if (h, w) == up.shape[:2] else np.ascontiguousarray(up[:h, :w])


#: corruption name -> fast path ``(uint8 image, params) -> uint8 image or None (not handled)``.
FAST_UINT8: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray | None]] = {
    "jpeg": jpeg_uint8,
    "pixelate": pixelate_uint8,
}
