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
  ``rint``) on the ``hb × wb`` block means only, then a uint8 nearest upsampling (Pillow).

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
    """Block mean of ``params["factor"]`` px (partial edge blocks: real pixels), nearest back.

    Channels first (planar float32, so every sum runs over long strided rows), sums in the
    general path's ``(a, b)`` order; the uint8 block means go back to ``H × W (× C)`` by Pillow's
    NEAREST resize to exactly ``f`` times their size (each pixel repeated ``f × f`` times).
    """
    f = int(params["factor"])
    h, w = image.shape[:2]
    hb, wb = -(-h // f), -(-w // f)
    chw = image[None] if image.ndim == 2 else image.transpose(2, 0, 1)
    if (h, w) != (hb * f, wb * f):  # zero padding adds exactly nothing to the sums
        padded = np.zeros((chw.shape[0], hb * f, wb * f), dtype=np.uint8)
        padded[:, :h, :w] = chw
        chw = padded
    x = np.ascontiguousarray(chw).astype(np.float32)
    x /= _F255
    blocks = x.reshape(-1, hb, f, wb, f)
    order = [(a, b) for a in range(f) for b in range(f)]
    acc = blocks[:, :, 0, :, 0].copy() if f == 1 else blocks[:, :, 0, :, 0] + blocks[:, :, 0, :, 1]
    for a, b in order[2:]:
        acc += blocks[:, :, a, :, b]
    rows = np.minimum(h - np.arange(hb) * f, f)
    cols = np.minimum(w - np.arange(wb) * f, f)
    acc /= (rows[:, None] * cols[None, :]).astype(np.float32)
    np.clip(acc, 0.0, 1.0, out=acc)
    acc *= _F255
    np.clip(acc, 0.0, _F255, out=acc)
    q = np.rint(acc, out=acc).astype(np.uint8)
    q = q[0] if image.ndim == 2 else np.ascontiguousarray(q.transpose(1, 2, 0))
    if f == 1:
        up = q
    else:
        up = np.asarray(Image.fromarray(q).resize((wb * f, hb * f), Image.Resampling.NEAREST))
    return up if (h, w) == up.shape[:2] else np.ascontiguousarray(up[:h, :w])


#: corruption name -> fast path ``(uint8 image, params) -> uint8 image or None (not handled)``.
FAST_UINT8: dict[str, Callable[[np.ndarray, Mapping[str, Any]], np.ndarray | None]] = {
    "jpeg": jpeg_uint8,
    "pixelate": pixelate_uint8,
}
