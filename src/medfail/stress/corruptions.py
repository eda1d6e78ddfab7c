"""Image corruptions: the kernels and :data:`CORRUPTIONS`, their table of three severities.

Every corruption works on images normalised to ``[0, 1]`` by their ``value_range`` ``(lo, hi)``,
so the same severity means the same thing on 8-bit, 16-bit and Hounsfield-unit images; results
are mapped back to native units and clipped to ``[lo, hi]`` (:func:`normalised`). Severity 0 is
the identity.

This module only defines: the severities are written once, in :data:`CORRUPTIONS` below (family
``corruption``, taxonomy ``data``, all modalities). The catalogue :mod:`medfail.stress.registry`
collects them and owns the entry points (``corrupt``, ``apply_corruption``, ``perturb_samples``);
``medfail list`` prints them and tests/test_stress_catalogue.py checks the table of
docs/stress_tests.md against them.

``jpeg`` quantises the normalised image to 8 bits before encoding, exactly like a real 8-bit JPEG
export: detail finer than 1/255 of ``(hi − lo)`` (fine 16-bit or HU gradations) is lost too.

``poisson_noise`` draws with ``rng.poisson`` on the CPU (the result returns to the tensor's
device). ``motion_blur`` and ``defocus`` reflect-pad by index, so kernels wider than the image
(28×28 and smaller, even 1×1) work; ``pixelate`` averages partial edge blocks over their real
pixels and always returns the original ``H × W``.

Volumes ``(N, C, X, Y, Z)``: the per-voxel corruptions (``gaussian_noise``, ``brightness``,
``contrast``, ``poisson_noise``, ``speckle``, ``gamma``) have ``dims=(2, 3)`` and work on them
unchanged (``contrast``'s mean is over the whole volume); the 2D kernels (``gaussian_blur``,
``jpeg``, ``motion_blur``, ``defocus``, ``pixelate``) stay ``dims=(2,)``, and
:data:`VOLUME_CORRUPTIONS` holds ``blur_3d``, a separable gaussian whose σ is in mm (its
``apply`` takes the volumes' ``spacing``).

All randomness comes from one numpy generator per image (noise is drawn per image and stacked),
and every operation is per image, so a sample's result never depends on batch size or order.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from medfail.stress.spec import StressTest

if TYPE_CHECKING:
    from medfail.stress.spec import ApplyFn

__all__ = [
    "CORRUPTIONS",
    "VOLUME_CORRUPTIONS",
    "Kernel",
    "blur_axis",
    "gaussian_taps",
    "normalised",
]

#: A corruption kernel: ``(x in [0, 1], params, rngs) -> corrupted x`` (clipped afterwards).
Kernel = Callable[[torch.Tensor, Mapping[str, Any], Sequence[np.random.Generator]], torch.Tensor]


def normalised(kernel: Kernel | Callable[..., torch.Tensor]) -> ApplyFn:
    """Wrap a ``[0, 1]``-space kernel into a native-unit batched ``apply`` function.

    Keyword arguments of ``apply`` (``spacing`` for the tests that use it) go to the kernel.
    """

    def apply(
        images: torch.Tensor,
        value_range: torch.Tensor,
        params: Mapping[str, Any],
        rngs: Sequence[np.random.Generator],
        **context: Any,
    ) -> torch.Tensor:
        shape = (-1,) + (1,) * (images.ndim - 1)
        lo = value_range[:, 0].reshape(shape)
        hi = value_range[:, 1].reshape(shape)
        span = hi - lo
        span = torch.where(span > 0, span, torch.ones_like(span))
        x01 = (images - lo).div_(span)
        # the kernel returns a new tensor: finish in place (same roundings as y * span + lo)
        out = kernel(x01, params, rngs, **context).clamp_(0.0, 1.0).mul_(span).add_(lo)
        return out.clamp_(min=lo, max=hi)

    apply.__name__ = getattr(kernel, "__name__", "apply")
    apply.__doc__ = kernel.__doc__
    return apply


# ----------------------------------------------------------------------------- kernels ([0, 1])


def _gaussian_noise(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Additive gaussian noise, σ = ``params["sigma"]`` (fraction of the range)."""
    shape = tuple(x.shape[1:])
    noise = np.stack([rng.standard_normal(shape).astype(np.float32) for rng in rngs])
    return x + float(params["sigma"]) * torch.from_numpy(noise).to(device=x.device, dtype=x.dtype)


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a reflect-padded axis (numpy ``"reflect"``), valid for any ``radius`` vs ``n``."""
    idx = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    m = idx.remainder(period)
    return torch.where(m >= n, period - m, m)


# Shifted-slice filters run over chunks of about this many elements (whole images), which stay
# in the CPU cache; every operation is per element, so chunking changes no result.
_CHUNK_ELEMS = 1 << 18


def _image_chunks(x: torch.Tensor) -> list[slice]:
    step = max(1, _CHUNK_ELEMS // max(1, x[0].numel()))
    return [slice(i, i + step) for i in range(0, x.shape[0], step)]


def blur_axis(x: torch.Tensor, weights: torch.Tensor, dim: int) -> torch.Tensor:
    """1D convolution along spatial ``dim`` (< 0) with reflect padding, a sum of shifted slices."""
    radius = (weights.numel() - 1) // 2
    n = x.shape[dim]
    index = _reflect_index(n, radius, x.device)
    out = torch.zeros_like(x)
    for rows in _image_chunks(x):
        padded, acc = x[rows].index_select(dim, index), out[rows]
        for k in range(weights.numel()):
            acc += weights[k] * padded.narrow(dim, k, n)
    return out


def _gaussian_blur(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Separable gaussian blur, σ = ``params["sigma_px"]`` pixels, radius ceil(3σ), reflect pad."""
    weights = gaussian_taps(float(params["sigma_px"])).to(x.device, x.dtype)
    return blur_axis(blur_axis(x, weights, -1), weights, -2)


def gaussian_taps(sigma: float) -> torch.Tensor:
    """Normalised 1D gaussian of std ``sigma`` (samples), radius ``max(1, ceil(3 sigma))``."""
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return torch.from_numpy((w / w.sum()).astype(np.float32))


def _blur_3d(
    x: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
    *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """Separable 3D gaussian blur, σ = ``params["sigma_mm"]`` mm on every axis.

    Axis ``a`` of image ``i`` is blurred with σ / ``spacing[i, a]`` voxels (radius ceil(3σ),
    reflect padding); with unknown spacing (1.0) σ is in voxels. An axis whose σ is under
    0.05 voxel is left as it is (its kernel would be a unit tap).
    """
    sigma_mm = float(params["sigma_mm"])
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        y = x[i : i + 1]
        for axis in range(3):
            sigma = sigma_mm / float(spacing[i, axis])
            if sigma >= 0.05:
                y = blur_axis(y, gaussian_taps(sigma).to(x.device, x.dtype), axis - 3)
        out[i : i + 1] = y
    return out


def _jpeg_roundtrip(img: np.ndarray, mode: str, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert(mode), dtype=np.uint8)


def _jpeg(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """JPEG encode/decode (Pillow) at quality ``params["quality"]`` of the 8-bit quantisation.

    One channel is encoded as ``"L"``, three as ``"RGB"``, any other count channel by channel.
    """
    quality = int(params["quality"])
    q8 = np.clip(np.rint(x.detach().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
    out = np.empty_like(q8)
    for i, img in enumerate(q8):
        if img.shape[0] == 3:
            rgb = np.ascontiguousarray(img.transpose(1, 2, 0))
            out[i] = _jpeg_roundtrip(rgb, "RGB", quality).transpose(2, 0, 1)
        else:
            for c in range(img.shape[0]):
                out[i, c] = _jpeg_roundtrip(np.ascontiguousarray(img[c]), "L", quality)
    return torch.from_numpy(out.astype(np.float32) / 255.0).to(device=x.device, dtype=x.dtype)


def _brightness(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Additive shift of ``params["shift"]`` (fraction of the range)."""
    return x + float(params["shift"])


def _contrast(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Scale by ``params["factor"]`` around each image's mean (over channels and pixels)."""
    dims = tuple(range(1, x.ndim))
    # float64 mean: per-image, and insensitive to the reduction order of the batch.
    mean = x.double().mean(dim=dims, keepdim=True).to(x.dtype)
    return mean + float(params["factor"]) * (x - mean)


def _poisson_noise(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Quantum noise: ``Poisson(λ·x) / λ``, λ = ``params["photons"]`` photons at full scale.

    Drawn per image with ``rng.poisson`` (on the CPU; the result moves back to ``x``'s device).
    """
    lam = float(params["photons"])
    x_np = np.clip(x.detach().cpu().numpy().astype(np.float64), 0.0, 1.0)
    counts = np.stack([rng.poisson(lam * img) for rng, img in zip(rngs, x_np, strict=True)])
    return torch.from_numpy((counts / lam).astype(np.float32)).to(device=x.device, dtype=x.dtype)


def _speckle(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Multiplicative speckle ``x·(1 + σ·n)``, n ~ N(0, 1), σ = ``params["sigma"]``."""
    shape = tuple(x.shape[1:])
    noise = np.stack([rng.standard_normal(shape).astype(np.float32) for rng in rngs])
    n = torch.from_numpy(noise).to(device=x.device, dtype=x.dtype)
    return x + float(params["sigma"]) * (x * n)


def _filter2d(x: torch.Tensor, kernels: np.ndarray) -> torch.Tensor:
    """Per-image 2D filtering with odd ``(N, K, K)`` kernels and index-based reflect padding.

    A sum of shifted slices (elementwise, so exactly per image); taps that are zero for an image
    are skipped for it, which adds exactly nothing. One kernel shared by the batch runs over
    cache-sized chunks of images, different kernels (motion blur angles) image by image.
    """
    n, _, h, w = x.shape
    size = kernels.shape[-1]
    radius = (size - 1) // 2
    padded = x.index_select(-2, _reflect_index(h, radius, x.device))
    padded = padded.index_select(-1, _reflect_index(w, radius, x.device))
    k32 = np.ascontiguousarray(kernels, dtype=np.float32)
    weights = torch.from_numpy(k32).to(device=x.device, dtype=x.dtype)
    out = torch.zeros_like(x)
    if (k32 == k32[:1]).all():
        taps = np.argwhere(k32[0] != 0)
        groups = [(rows, taps, weights[rows, None, None, None]) for rows in _image_chunks(x)]
    else:
        groups = [(slice(i, i + 1), np.argwhere(k32[i] != 0), weights[i : i + 1, None, None, None])
                  for i in range(n)]
    for rows, taps, wts in groups:
        acc, src = out[rows], padded[rows]
        for dy, dx in taps.tolist():
            acc += wts[..., dy, dx] * src[:, :, dy : dy + h, dx : dx + w]
    return out


def _motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """Normalised anti-aliased line kernel, ``length`` px long at ``angle_deg`` (0° = horizontal).

    The segment is sampled at 16 points per pixel and splatted bilinearly; the angle turns
    counter-clockwise on screen (rows grow downwards). Shape ``(2⌈L/2⌉ + 1,) * 2``.
    """
    half = math.ceil(length / 2)
    size = 2 * half + 1
    n = 16 * length
    t = (np.arange(n) + 0.5) / n * length - length / 2
    theta = math.radians(angle_deg)
    px = half + t * math.cos(theta)
    py = half - t * math.sin(theta)
    x0 = np.floor(px).astype(np.intp)
    y0 = np.floor(py).astype(np.intp)
    fx, fy = px - x0, py - y0
    k = np.zeros((size + 1, size + 1))
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(k, (y0 + dy, x0 + dx), wy * wx)
    k = k[:size, :size]
    return k / k.sum()


def _motion_blur(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Linear motion blur of ``params["length_px"]`` px at a per-image angle ~ U(0°, 180°)."""
    length = int(params["length_px"])
    kernels = np.stack([_motion_kernel(length, float(rng.uniform(0.0, 180.0))) for rng in rngs])
    return _filter2d(x, kernels)


@functools.lru_cache(maxsize=16)
def _disk_kernel(radius: float) -> np.ndarray:
    """Normalised anti-aliased disk: each weight is the pixel's area inside the circle.

    Area fractions are estimated with 32×32 sub-samples per pixel. Pixel ``k`` (spanning
    ``k ± 0.5``) can only touch the disk if ``k < r + 0.5``: the kernel is ``(2h + 1,) * 2`` with
    ``h = ⌈r + 0.5⌉ − 1``.
    """
    half = max(0, math.ceil(radius + 0.5) - 1)
    sub = 32
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    fine = (np.arange(-half, half + 1)[:, None] + offsets[None, :]).ravel()
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
    size = 2 * half + 1
    k = inside.reshape(size, sub, size, sub).mean(axis=(1, 3))
    k = k / k.sum()
    k.setflags(write=False)
    return k


def _defocus(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Defocus blur: convolution with an anti-aliased disk of radius ``params["radius_px"]``."""
    disk = _disk_kernel(float(params["radius_px"]))
    return _filter2d(x, np.broadcast_to(disk, (x.shape[0], *disk.shape)))


def _pixelate(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Block-average by ``params["factor"]``, then nearest-upsample back to the original size.

    Blocks start at the top-left corner; partial blocks at the bottom/right edges average only
    their real pixels, so any ``H, W`` works (28×28 at factor 3 stays 28×28).
    """
    f = int(params["factor"])
    n, c, h, w = x.shape
    hb, wb = -(-h // f), -(-w // f)
    if (h, w) == (hb * f, wb * f):
        padded = x
    else:
        padded = x.new_zeros((n, c, hb * f, wb * f))
        padded[:, :, :h, :w] = x
    sums = x.new_zeros((n, c, hb, wb))
    for a in range(f):
        for b in range(f):
            sums += padded[:, :, a::f, b::f]
    rows = (h - torch.arange(hb, device=x.device) * f).clamp(max=f)
    cols = (w - torch.arange(wb, device=x.device) * f).clamp(max=f)
    means = sums / (rows[:, None] * cols[None, :]).to(x.dtype)
    # nearest upsampling: every block mean repeated f x f times, cropped to (h, w)
    up = means[:, :, :, None, :, None].expand(n, c, hb, f, wb, f).contiguous()
    up = up.view(n, c, hb * f, wb * f)
    return up if (h, w) == up.shape[-2:] else up[:, :, :h, :w].contiguous()


def _gamma(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Gamma curve ``x**γ`` on ``[0, 1]``, γ = ``params["gamma"]`` (> 1 darkens mid-tones)."""
    return x.clamp(0.0, 1.0).pow(float(params["gamma"]))


# ------------------------------------------------------------------------------ registration

_ANY = ("any",)
_BOTH = (2, 3)  # per-voxel kernels: the same on 2D images and volumes

CORRUPTIONS: tuple[StressTest, ...] = (
    StressTest(
        name="gaussian_noise",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"sigma": 0.04}, {"sigma": 0.08}, {"sigma": 0.12}),
        description="Additive gaussian noise (acquisition noise, low dose).",
        unit="sigma: noise std as a fraction of the intensity range (hi - lo)",
        dims=_BOTH,
        apply=normalised(_gaussian_noise),
    ),
    StressTest(
        name="gaussian_blur",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"sigma_px": 1.0}, {"sigma_px": 2.0}, {"sigma_px": 3.0}),
        description="Gaussian blur (defocus, motion, lower resolution).",
        unit="sigma_px: gaussian std in pixels (kernel radius ceil(3 sigma), reflect padding)",
        apply=normalised(_gaussian_blur),
    ),
    StressTest(
        name="jpeg",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"quality": 30}, {"quality": 15}, {"quality": 8}),
        description="Lossy 8-bit JPEG export (PACS/teleradiology compression).",
        unit="quality: Pillow JPEG quality of the 8-bit quantised image",
        apply=normalised(_jpeg),
    ),
    StressTest(
        name="brightness",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"shift": 0.1}, {"shift": 0.2}, {"shift": 0.3}),
        description="Global brightness increase (exposure, calibration offset).",
        unit="shift: additive offset as a fraction of the intensity range (hi - lo)",
        dims=_BOTH,
        apply=normalised(_brightness),
    ),
    StressTest(
        name="contrast",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"factor": 0.7}, {"factor": 0.5}, {"factor": 0.3}),
        description="Reduced contrast around the image mean (windowing, exposure).",
        unit="factor: scale of deviations from the per-image mean",
        dims=_BOTH,
        apply=normalised(_contrast),
    ),
    StressTest(
        name="poisson_noise",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"photons": 60}, {"photons": 25}, {"photons": 10}),
        description="Poisson quantum noise (low photon count, low-dose X-ray/CT).",
        unit="photons: expected photon count at full scale (hi); x -> Poisson(photons*x)/photons",
        dims=_BOTH,
        apply=normalised(_poisson_noise),
    ),
    StressTest(
        name="speckle",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"sigma": 0.15}, {"sigma": 0.3}, {"sigma": 0.5}),
        description="Multiplicative speckle noise (ultrasound, coherent imaging).",
        unit="sigma: std of the multiplicative factor, x -> x * (1 + sigma * N(0, 1))",
        dims=_BOTH,
        apply=normalised(_speckle),
    ),
    StressTest(
        name="motion_blur",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"length_px": 5}, {"length_px": 9}, {"length_px": 15}),
        description="Linear motion blur at a per-sample random angle (patient/probe motion).",
        unit="length_px: blur length in pixels (angle ~ U(0, 180) deg per sample, reflect pad)",
        apply=normalised(_motion_blur),
    ),
    StressTest(
        name="defocus",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"radius_px": 1.5}, {"radius_px": 3.0}, {"radius_px": 5.0}),
        description="Defocus blur with a disk kernel (out-of-focus optics, microscopy).",
        unit="radius_px: disk radius in pixels (anti-aliased weights, reflect padding)",
        apply=normalised(_defocus),
    ),
    StressTest(
        name="pixelate",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"factor": 2}, {"factor": 3}, {"factor": 4}),
        description="Resolution loss: block-average downsampling, nearest upsampling back.",
        unit="factor: block size in pixels (down by factor, nearest back to the original size)",
        apply=normalised(_pixelate),
    ),
    StressTest(
        name="gamma",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"gamma": 1.5}, {"gamma": 2.0}, {"gamma": 3.0}),
        description="Gamma curve x**gamma on [0, 1] (display/LUT mismatch; darkens mid-tones).",
        unit="gamma: exponent applied to the [0, 1]-normalised image (lo and hi are fixed)",
        dims=_BOTH,
        apply=normalised(_gamma),
    ),
)

#: The corruptions made for volumes only (``dims=(3,)``); the per-voxel ones of
#: :data:`CORRUPTIONS` apply to volumes too (``dims=(2, 3)``).
VOLUME_CORRUPTIONS: tuple[StressTest, ...] = (
    StressTest(
        name="blur_3d",
        family="corruption",
        taxonomy="data",
        modalities=_ANY,
        severities=({"sigma_mm": 1.0}, {"sigma_mm": 2.0}, {"sigma_mm": 3.0}),
        description="3D gaussian blur in mm (lower resolution, smooth reconstruction kernel).",
        unit="sigma_mm: gaussian std in mm on each axis (in voxels when the spacing is "
        "unknown); radius ceil(3 sigma) voxels, reflect padding",
        apply=normalised(_blur_3d),
        dims=(3,),
        uses_spacing=True,
    ),
)
