"""Per-image corruption speed: medfail vs imagecorruptions 1.1.2 and albumentations 2.0.8.

Every library gets the same images (synthetic phantoms, 256 x 256: uint8 RGB and grey, float32
grey in [0, 1], uint16 grey; see ``KINDS``) and corrupts them one at a time through its public
per-image API, at the severities that match medfail's parameters
most closely (see ``PAIRS``). All libraries run single-threaded (torch and OpenCV set to one
thread) so the comparison does not depend on how each one uses the two cores of a shared box.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.common import best_of, ratio
from benchmarks.compat import BROKEN, load_imagecorruptions

SIZE = 256
N_IMAGES = 8
REPS = 7


@dataclass(frozen=True)
class Pair:
    """A medfail corruption at a severity and its closest imagecorruptions / albumentations."""

    name: str
    severity: int
    ic_name: str
    ic_severity: int
    albumentations: Callable[[Any], Any]  # albumentations module -> transform
    match: str


def _downscale(A: Any) -> Any:
    import cv2

    return A.Downscale(scale_range=(0.5, 0.5), p=1.0,
                       interpolation_pair={"downscale": cv2.INTER_AREA,
                                           "upscale": cv2.INTER_NEAREST})


PAIRS: tuple[Pair, ...] = (
    Pair("gaussian_noise", 2, "gaussian_noise", 1,
         lambda A: A.GaussNoise(std_range=(0.08, 0.08), p=1.0),
         "exact: sigma 0.08 of the range in all three"),
    Pair("poisson_noise", 1, "shot_noise", 1,
         lambda A: A.ShotNoise(scale_range=(1 / 60, 1 / 60), p=1.0),
         "exact vs imagecorruptions (60 photons at full scale); albumentations draws the same "
         "Poisson counts in gamma-linearised space"),
    Pair("speckle", 1, "speckle_noise", 1,
         lambda A: A.MultiplicativeNoise(multiplier=(1 - 0.15 * 3**0.5, 1 + 0.15 * 3**0.5),
                                         per_channel=True, elementwise=True, p=1.0),
         "exact vs imagecorruptions (x(1 + 0.15 n)); albumentations: uniform multiplier with "
         "the same variance (it has no gaussian speckle)"),
    Pair("gaussian_blur", 1, "gaussian_blur", 1,
         lambda A: A.GaussianBlur(blur_limit=(7, 7), sigma_limit=(1.0, 1.0), p=1.0),
         "sigma 1 px in all three (radius 3 in medfail and albumentations, 4 in skimage)"),
    Pair("motion_blur", 3, "motion_blur", 1,
         lambda A: A.MotionBlur(blur_limit=(15, 15), allow_shifted=False, angle_range=(0, 180),
                                direction_range=(0.0, 0.0), p=1.0),
         "approximate: 15 px line (medfail, albumentations) vs imagecorruptions' 21-tap "
         "one-sided gaussian-weighted streak (radius 10, sigma 3, its mildest)"),
    Pair("defocus", 2, "defocus_blur", 1,
         lambda A: A.Defocus(radius=(3, 3), alias_blur=(0.1, 0.1), p=1.0),
         "disk radius 3 px in all three (imagecorruptions/albumentations smooth the disk with "
         "a 0.1 px gaussian; medfail anti-aliases by area)"),
    Pair("contrast", 3, "contrast", 2,
         lambda A: A.RandomBrightnessContrast(brightness_limit=(0.7, 0.7),
                                              contrast_limit=(-0.7, -0.7),
                                              brightness_by_max=False, p=1.0),
         "exact: mean + 0.3 (x - mean) (albumentations: x*0.3 + 0.7*mean(x))"),
    Pair("brightness", 1, "brightness", 1,
         lambda A: A.RandomBrightnessContrast(brightness_limit=(0.1, 0.1),
                                              contrast_limit=(0.0, 0.0), p=1.0),
         "+0.1 of the range (imagecorruptions adds it to HSV value for RGB input)"),
    Pair("jpeg", 2, "jpeg_compression", 3,
         lambda A: A.ImageCompression(quality_range=(15, 15), p=1.0),
         "exact: JPEG quality 15 (Pillow in medfail and imagecorruptions, OpenCV in "
         "albumentations; all libjpeg)"),
    Pair("pixelate", 1, "pixelate", 2, _downscale,
         "exact: 2x block average down, nearest up (imagecorruptions: PIL BOX/NEAREST; "
         "albumentations: OpenCV AREA/NEAREST)"),
)

UNSHARED = {
    "gamma": "medfail only (imagecorruptions has no gamma curve)",
    "impulse_noise, glass_blur, zoom_blur, snow, frost, fog, elastic_transform, spatter, "
    "saturate": "imagecorruptions only (no medfail equivalent)",
}


def _images(channels: int) -> list[np.ndarray]:
    """``N_IMAGES`` synthetic chest phantoms as uint8, grey (H, W) or RGB (H, W, 3)."""
    from medfail.data.phantoms import generate_phantom

    out = []
    for i in range(N_IMAGES):
        ph = generate_phantom(np.random.default_rng(i), SIZE, "A", (0.5, 0.35, 0.35))
        grey = ph.image
        img = grey if channels == 1 else np.stack([grey, 0.9 * grey, 0.8 * grey], axis=-1)
        out.append(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out


def _change(clean: np.ndarray, out: np.ndarray) -> float:
    """Mean absolute change in grey levels (grey input vs an RGB output compares per channel)."""
    out = np.asarray(out, dtype=np.float64)
    if out.ndim == 3 and out.shape[-1] == 1:
        out = out[..., 0]
    ref = clean[..., None] if out.ndim > clean.ndim else clean
    return round(float(np.abs(out - ref).mean()), 2)


def _per_image(fn: Callable[[np.ndarray], object], images: list[np.ndarray]
               ) -> Callable[[], None]:
    def run() -> None:
        for im in images:
            fn(im)

    return run


def _batched(name: str, severity: int, images: list[np.ndarray]) -> Callable[[], None]:
    """medfail's engine path: one ``apply_corruption`` call on the float32 (N, C, H, W) batch."""
    import torch

    from medfail.stress.registry import apply_corruption

    chw = [im[None] if im.ndim == 2 else im.transpose(2, 0, 1) for im in images]
    x = torch.from_numpy(np.stack(chw).astype(np.float32))
    vr = torch.tensor([0.0, 255.0])

    def run() -> None:
        rngs = [np.random.default_rng(i) for i in range(len(images))]
        apply_corruption(x, vr, name, severity, rngs)

    return run


#: Image kinds: (key in ``results``, channels, dtype, what each library is given).
KINDS: tuple[tuple[str, int, str, str], ...] = (
    ("rgb", 3, "uint8", "uint8 RGB (H, W, 3) to all three"),
    ("grey", 1, "uint8", "uint8 grey (H, W) to all three"),
    ("float32_grey", 1, "float32",
     "float32 grey in [0, 1] (a windowed CT slice): medfail corrupt(value_range=(0, 1)) and "
     "albumentations on the float32 array; imagecorruptions only takes 8-bit images, so its "
     "timing includes the uint8 conversion rint(255 x) it needs (its output is uint8)"),
    ("uint16_grey", 1, "uint16",
     "uint16 grey over the full 16-bit range (u8 x 257, 16-bit MRI/X-ray): medfail "
     "corrupt(value_range=(0, 65535)); imagecorruptions after the 8-bit conversion x >> 8 "
     "(timed); albumentations on the uint16 array where it accepts it (null where it raises)"),
)


def _inputs(kind: str, channels: int) -> list[np.ndarray]:
    u8 = _images(channels)
    if kind == "float32_grey":
        return [im.astype(np.float32) / np.float32(255.0) for im in u8]
    if kind == "uint16_grey":
        return [im.astype(np.uint16) * np.uint16(257) for im in u8]
    return u8


def _to_uint8(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """What a user must do before imagecorruptions (8-bit only): identity for uint8."""
    if kind == "float32_grey":
        return lambda im: np.rint(im * 255.0).astype(np.uint8)
    if kind == "uint16_grey":
        return lambda im: (im >> 8).astype(np.uint8)
    return lambda im: im


_VALUE_RANGE = {"float32_grey": (0.0, 1.0), "uint16_grey": (0.0, 65535.0)}


def run() -> dict[str, Any]:
    import albumentations as A
    import cv2
    import torch

    from medfail.stress.registry import corrupt

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ic, patches = load_imagecorruptions()
    warnings.filterwarnings("ignore")

    results: dict[str, Any] = {}
    refused: dict[str, dict[str, str]] = {}
    for mode, channels, _dtype, _given in KINDS:
        images = _inputs(mode, channels)
        vr = _VALUE_RANGE.get(mode)
        to8 = _to_uint8(mode)
        rows = {}
        for pair in PAIRS:
            aug = pair.albumentations(A)
            try:
                alb_out = aug(image=images[0])["image"]
            except Exception as exc:  # albumentations refuses some dtypes (uint16)
                alb_out = None
                refused.setdefault(mode, {})[pair.name] = f"{type(exc).__name__}: {exc}"[:160]
            fns = {
                "medfail": _per_image(lambda im, p=pair, r=vr: corrupt(im, p.name, p.severity,
                                                                       value_range=r), images),
                "imagecorruptions": _per_image(
                    lambda im, p=pair, t=to8: ic.corrupt(t(im), severity=p.ic_severity,
                                                         corruption_name=p.ic_name), images),
            }
            if mode in ("rgb", "grey"):
                fns["medfail_batched"] = _batched(pair.name, pair.severity, images)
            if alb_out is not None:
                fns["albumentations"] = _per_image(lambda im, a=aug: a(image=im)["image"],
                                                   images)
            secs = best_of(fns, reps=REPS)
            ms = {k: round(v / len(images) * 1e3, 4) for k, v in secs.items()}
            # changes in 8-bit grey levels, whatever the dtype
            scale = 255.0 / (vr[1] - vr[0]) if vr else 1.0
            clean8 = to8(images[0])
            change = {
                "medfail": corrupt(images[0], pair.name, pair.severity, value_range=vr) * scale,
                "imagecorruptions": ic.corrupt(clean8, severity=pair.ic_severity,
                                               corruption_name=pair.ic_name),
            }
            if alb_out is not None:
                change["albumentations"] = np.asarray(alb_out, dtype=np.float64) * scale
            row: dict[str, Any] = {
                "medfail_severity": pair.severity,
                "imagecorruptions": f"{pair.ic_name}@{pair.ic_severity}",
                "match": pair.match,
                "ms_per_image": ms,
                "speedup_vs_imagecorruptions": round(ratio(ms["imagecorruptions"],
                                                           ms["medfail"]), 3),
                "speedup_vs_albumentations": (round(ratio(ms["albumentations"], ms["medfail"]), 3)
                                              if "albumentations" in ms else None),
                # mean |corrupted - clean| in 8-bit grey levels: comparable strengths
                "mean_abs_change": {k: _change(clean8, v) for k, v in change.items()},
            }
            if "medfail_batched" in ms:
                row["batched_speedup_vs_imagecorruptions"] = round(
                    ratio(ms["imagecorruptions"], ms["medfail_batched"]), 3)
                row["batched_speedup_vs_albumentations"] = round(
                    ratio(ms["albumentations"], ms["medfail_batched"]), 3)
            rows[pair.name] = row
        results[mode] = rows
    return {"image": f"{SIZE}x{SIZE} synthetic phantoms, {N_IMAGES} images per kind",
            "kinds": {mode: given for mode, _c, _d, given in KINDS},
            "threads": "torch 1, OpenCV 1 (numpy/scipy/Pillow single-threaded)",
            "timing": f"per image, best of {REPS} interleaved rounds",
            "imagecorruptions_patches": patches,
            "imagecorruptions_skipped": BROKEN,
            "albumentations_refused": refused,
            "unshared": UNSHARED,
            "results": results}


def summary(details: dict[str, Any], mode: str = "rgb") -> dict[str, Any]:
    """Minimum (slowest-for-medfail) speed-ups over the shared corruptions a peer runs."""
    rows = details["results"][mode]
    out: dict[str, Any] = {}
    for peer in ("imagecorruptions", "albumentations"):
        per = {k: v[f"speedup_vs_{peer}"] for k, v in rows.items()}
        ran = {k: x for k, x in per.items() if x is not None}
        worst = min(ran, key=ran.__getitem__) if ran else None
        out[peer] = {"min": ran[worst] if worst else None, "slowest": worst,
                     "per_corruption": per}
        batched = {k: v[f"batched_speedup_vs_{peer}"] for k, v in rows.items()
                   if f"batched_speedup_vs_{peer}" in v}
        if batched:
            out[peer].update(batched_min=min(batched.values()), batched_per_corruption=batched)
    return out
