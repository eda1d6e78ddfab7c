"""Training intensity summaries and the test-vs-training intensity check of ``medfail run``.

All intensities are in medfail's units (:mod:`medfail.data.readers`: 8-bit grey levels for
PNG/JPEG/TIFF, HU for CT...), with channels adapted to the model's ``in_channels`` as the model
receives them, before its normalisation.

Summary (stored as ``ModelSpec.intensity`` by ``medfail train``), per channel: ``p01``/``p99``
(1st/99th percentile of up to :data:`PIXEL_BUDGET` pixels, an even stride of every image) and
the exact ``min``/``max``.

Check (:func:`check_intensity`, on up to :data:`MAX_IMAGES` test images evenly spread over the
dataset). It warns (one ``warning: ...`` line on stderr, and ``run.json["intensity"]``) when

* more than :data:`MAX_OUTSIDE` of the test pixels of a channel lie outside the training
  ``[p01, p99]`` by more than 2 % of the training spread ``p99 - p01``, or
* the test spread ``p99 - p01`` is more than :data:`MAX_SCALE_RATIO` times the training spread,
  or less than its inverse (16-bit counts against 0..255, HU against [0, 1]...).

The reference is ``spec.intensity``; for models without one (older model files, JSON specs) an
approximation from ``spec.normalisation`` (``mean -/+ 2.326 std``, the 1st/99th percentile of a
normal distribution); with neither, only the next check runs. Independently of the model, it
warns when the test images' own span ``max - min`` is under :data:`MIN_FILL` of their
``value_range`` (median over images): stress tests act relative to ``value_range``, so their
perturbations would be far stronger than meant. 8- or 12-bit content in 16-bit files does not
fire it: a folder dataset's ``value_range`` is already the full scale of its *effective* bit
depth (:mod:`medfail.data.folder`), so what remains is genuinely dark images, or a few images
using far more of the bit depth than the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medfail.models.preprocess import adapt_channels
from medfail.models.spec import ModelSpec

if TYPE_CHECKING:
    from medfail.data.datasets import Dataset

PIXEL_BUDGET = 2_000_000  # pixels per channel pooled for percentiles (summary and check)
MAX_IMAGES = 32
MAX_OUTSIDE = 0.5
MAX_SCALE_RATIO = 10.0
MIN_FILL = 1 / 8
_Z99 = 2.326  # standard normal 99th percentile
_MARGIN = 0.02


def _strided(image: np.ndarray, n: int) -> np.ndarray:
    """``(C, <= n)`` pixels of a ``(C, ...)`` image, an even stride over its flattened pixels."""
    flat = image.reshape(image.shape[0], -1)
    step = max(1, -(-flat.shape[1] // max(n, 1)))
    return flat[:, ::step]


def _pool(images: Iterable[np.ndarray], in_channels: int, n: int | None = None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled strided pixels ``(C, N)`` (float64) and exact per-channel min and max of
    ``images`` (``n`` of them when they are streamed: one image in memory at a time)."""
    count = len(images) if n is None else n  # type: ignore[arg-type]
    per_image = max(256, PIXEL_BUDGET // max(count, 1))
    parts, lows, highs = [], [], []
    for im in images:
        im = adapt_channels(np.asarray(im, np.float32), in_channels)
        flat = im.reshape(im.shape[0], -1)
        lows.append(flat.min(axis=1))
        highs.append(flat.max(axis=1))
        parts.append(_strided(im, per_image).astype(np.float64))
    return np.concatenate(parts, axis=1), np.min(lows, axis=0), np.max(highs, axis=0)


def summarise(images: Sequence[np.ndarray], in_channels: int) -> dict[str, list[float]]:
    """``{"p01", "p99", "min", "max"}`` per channel of ``(C, H, W)`` images (ModelSpec format)."""
    if not len(images):
        raise ValueError("no images to summarise")
    pixels, lo, hi = _pool(images, in_channels)
    p01, p99 = np.percentile(pixels, [1, 99], axis=1)
    return {"p01": [float(v) for v in p01], "p99": [float(v) for v in p99],
            "min": [float(v) for v in lo], "max": [float(v) for v in hi]}


def reference(spec: ModelSpec) -> tuple[dict[str, list[float]] | None, str | None]:
    """The training intensities to compare with and where they come from."""
    if spec.intensity is not None:
        return spec.intensity, "model spec intensity"
    if spec.normalisation:
        mean = np.asarray(spec.normalisation["mean"], float)
        std = np.asarray(spec.normalisation["std"], float)
        low, high = (mean - _Z99 * std).tolist(), (mean + _Z99 * std).tolist()
        return ({"p01": low, "p99": high, "min": low, "max": high},
                "model normalisation (approximate: mean -/+ 2.326 std)")
    return None, None


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def check_intensity(spec: ModelSpec, dataset: Dataset, max_images: int = MAX_IMAGES,
                    warn: bool = True) -> dict[str, Any]:
    """Compare the test data's intensities with the model's training data (module docstring).

    Returns the ``run.json["intensity"]`` record; with ``warn`` its warning (if any) is also
    printed as one ``warning: ...`` line on stderr.
    """
    ids = list(dataset.ids)
    if not ids:
        return {"reference": None, "warning": None}
    pick = np.unique(np.linspace(0, len(ids) - 1, min(max_images, len(ids))).round().astype(int))
    seen: list[tuple[tuple[float, float], float, float]] = []  # value range, image min, max

    def images() -> Iterator[np.ndarray]:
        for i in pick:  # one sample (one volume) in memory at a time
            s = dataset.load(ids[i])
            seen.append((s.value_range, float(s.image.min()), float(s.image.max())))
            yield s.image

    try:
        pixels, lo, hi = _pool(images(), spec.in_channels, len(pick))
    except ValueError:  # channel mismatch: reported by the run's own compatibility check
        return {"reference": None, "warning": None}
    p01, p99 = np.percentile(pixels, [1, 99], axis=1)
    test = {"p01": p01.tolist(), "p99": p99.tolist(), "min": lo.tolist(), "max": hi.tolist()}
    problems: list[str] = []

    train, source = reference(spec)
    outside: list[float] = []
    ratios: list[float] = []
    if train is not None:
        for c in range(pixels.shape[0]):
            t01, t99 = train["p01"][c], train["p99"][c]
            t_spread = t99 - t01 if t99 > t01 else max(abs(t01), abs(t99), 1.0) * 1e-6
            margin = _MARGIN * t_spread
            row = pixels[c]
            frac = float(np.mean((row < t01 - margin) | (row > t99 + margin)))
            ratio = float(max(p99[c] - p01[c], 0.0) / t_spread)
            outside.append(frac)
            ratios.append(ratio)
            if problems:
                continue
            reasons = []
            if frac > MAX_OUTSIDE:
                reasons.append(f"{frac:.0%} of test pixels are outside the training p01..p99 "
                               f"[{_fmt(t01)}, {_fmt(t99)}]")
            if ratio > MAX_SCALE_RATIO or ratio < 1 / MAX_SCALE_RATIO:
                reasons.append(f"the test spread p01..p99 [{_fmt(p01[c])}, {_fmt(p99[c])}] is "
                               f"{_fmt(ratio)}x the training spread")
            if reasons:
                chan = f" (channel {c})" if pixels.shape[0] > 1 else ""
                problems.append("test intensities fall outside the model's training data"
                                f"{chan}: " + " and ".join(reasons) + " - check the bit depth/"
                                "units of the test images against the training images")

    fills = []
    for (v_lo, v_hi), im_min, im_max in seen:
        span = float(v_hi) - float(v_lo)
        if span > 0:
            fills.append((im_max - im_min) / span)
    fill = float(np.median(fills)) if fills else None
    if fill is not None and fill < MIN_FILL:
        vr = seen[0][0]
        problems.append(f"the test images span only {fill:.1%} of their intensity scale "
                        f"{_fmt(vr[0])}..{_fmt(vr[1])} (dark images, or a few images using far "
                        "more of the bit depth than the rest), so stress tests relative to that "
                        "scale are much stronger than their severity says")
    message = "; ".join(problems) + " (docs/data.md, Intensities)" if problems else None
    if message and warn:
        print(f"warning: {message}", file=sys.stderr, flush=True)
    return {"reference": source, "train": train, "test": test, "n_images": len(seen),
            "outside_fraction": outside, "scale_ratio": ratios, "test_range_fill": fill,
            "warning": message}
