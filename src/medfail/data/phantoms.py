"""Embedded default data: deterministic SYNTHETIC chest-like 2D phantoms with ground truth.

These images are synthetic. They are not patient data and carry no clinical meaning; they exist so
that ``medfail demo`` can show every analysis offline with effects that are known to be real.

Each image is a 2D "chest slice": a body ellipse, two dark lungs with smooth texture, a bright
spine and up to three findings, which are the multi-label classification targets:

* ``nodule`` - a solid bright disc inside a lung (small: radius 1.5-2.5 px, large: 4-7 px);
* ``cavity`` - a hollow lesion: a bright ring with an air-filled centre (outer radius 4-8 px);
* ``effusion`` - a bright fluid layer filling the base of one lung (not segmented).

The segmentation mask (class 1, ``lesion``) covers nodules and the *wall* of cavities, so
hollow lesions have ring-shaped masks. ``metadata.csv`` holds what the slices need: site,
protocol, pixel spacing, lesion area (px), size class, location (central/peripheral) and shape
(solid/hollow/mixed).

Planted effects (true by construction, for later analysis to find):

* site ``B`` (``low_dose``) is much noisier and is rare in training (15 %) but common in test;
* site ``C`` (``low_res``) is blurred by a 2x down/up-sampling and has lower contrast;
* small nodules are a few pixels wide, so blur, noise and down-sampling erase them first;
* site ``D`` (``other_vendor``, the ``shift`` split) never appears in training or test: lower
  contrast, more noise and half the resolution - a real second-site shift;
* hollow lesions have thin ring masks, so boundary errors cost them more Dice;
* an *unnamed* marker - a bright rectangle, like a burned-in film label, in one image corner
  outside the body - that no metadata column records: in ``train`` it is drawn on most effusion
  images and few others (``PhantomConfig.marker_given_effusion_train`` /
  ``marker_given_no_effusion_train``), so a classifier learns it as a shortcut for effusion; in
  the other splits it appears at ``marker_rate_eval`` whatever the labels (slice discovery
  should find the images where marker and effusion disagree);
* ``label_flips`` labels of the ``calibration`` split (distinct images; targets among
  ``label_flip_targets``, default ``cavity``) are written flipped in labels.csv (label-issue
  analyses should find them): unambiguous errors at site A, alternately a cavity written absent
  on an image with no other lesion and one written present on an image with no lesion.

``planted.json`` beside ``phantoms.json`` is the answer key of the last two (marker ids per split,
the flipped (id, target, true_label, written_label)); it is for tests and docs - medfail never
reads it during a run. The marker and the flips have their own random streams, so with the
marker rates and ``label_flips`` at 0 every image and label is the same as without them.

Everything is drawn from ``numpy.random.default_rng`` seeded by (seed, split, index): the same
arguments always give the same bytes on disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from medfail.seeding import derive_seed

FINDINGS: tuple[str, ...] = ("nodule", "cavity", "effusion")
#: bumped when the generator draws other images or labels for the same config, so folders
#: (and demo baselines) written by an older medfail are rewritten (2: marker, label flips)
GENERATOR_VERSION = 2
MASK_CLASSES: tuple[str, ...] = ("lesion",)


@dataclass(frozen=True)
class Site:
    """An acquisition site: its protocol changes noise, contrast and resolution."""

    protocol: str
    noise_sd: float  # additive gaussian noise, fraction of the [0, 1] intensity scale
    contrast: float  # scale around the body mean
    downsample: int  # 2 = resolution halved then restored (blur of fine detail)
    pixel_spacing: float  # mm


SITES: dict[str, Site] = {
    "A": Site("standard", noise_sd=0.02, contrast=1.00, downsample=1, pixel_spacing=0.7),
    "B": Site("low_dose", noise_sd=0.14, contrast=0.95, downsample=1, pixel_spacing=0.7),
    "C": Site("low_res", noise_sd=0.03, contrast=0.6, downsample=2, pixel_spacing=1.4),
    # never seen in training: another vendor's scanner (the demo's --shift-data split)
    "D": Site("other_vendor", noise_sd=0.08, contrast=0.5, downsample=2, pixel_spacing=1.0),
}


@dataclass(frozen=True)
class PhantomConfig:
    """What the phantom generator draws; the defaults are the demo's."""

    size: int = 128
    n_train: int = 320
    n_calibration: int = 96
    n_test: int = 96
    n_shift: int = 48
    seed: int = 0
    prevalence: tuple[float, float, float] = (0.5, 0.35, 0.35)  # nodule, cavity, effusion
    site_mix_train: dict[str, float] = field(
        default_factory=lambda: {"A": 0.6, "B": 0.15, "C": 0.25}
    )
    site_mix_test: dict[str, float] = field(
        default_factory=lambda: {"A": 0.4, "B": 0.3, "C": 0.3}
    )
    #: the unnamed marker (a burned-in film label, see ``_draw_marker``): in ``train`` it is drawn
    #: with these probabilities given effusion / no effusion (a spurious correlation); in every
    #: other split with ``marker_rate_eval`` whatever the labels. All three 0 = no marker.
    marker_given_effusion_train: float = 0.98
    marker_given_no_effusion_train: float = 0.02
    marker_rate_eval: float = 0.5
    #: this many (image, target) labels of the ``calibration`` split are flipped in labels.csv
    #: (at distinct images); ``planted.json`` records them
    label_flips: int = 6
    #: the targets flips are drawn among: ``cavity``, the finding the demo classifier reads
    #: reliably; flipped effusion labels would hide among the model's own confident effusion
    #: mistakes (the marker shortcut), which no label-issue method can tell from label errors
    label_flip_targets: tuple[str, ...] = ("cavity",)

    def to_json(self) -> str:
        """The config, the site table and :data:`GENERATOR_VERSION` (what the images depend
        on): stamps and cache keys."""
        return json.dumps({**asdict(self), "sites": {k: asdict(v) for k, v in SITES.items()},
                           "generator": GENERATOR_VERSION}, sort_keys=True)


@dataclass
class Phantom:
    """One generated image with its ground truth."""

    image: np.ndarray  # float in [0, 1], (H, W)
    mask: np.ndarray  # uint8 (H, W), 1 = lesion
    labels: dict[str, int]
    metadata: dict[str, object]
    marker: bool = False  # the unnamed marker was drawn (never in labels or metadata)


def _ellipse(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2


def _lesion_centre(
    rng: np.random.Generator, lung: tuple[float, float, float, float], central: bool, radius: float
) -> tuple[float, float]:
    """A point inside a lung ellipse: central = near the lung centre, peripheral = near its edge."""
    cy, cx, ry, rx = lung
    lo, hi = (0.0, 0.4) if central else (0.62, 0.8)
    rho = rng.uniform(lo, hi)
    theta = rng.uniform(0, 2 * np.pi)
    # keep the whole lesion inside the lung
    shrink_y = max(ry - radius - 1, 1) / ry
    shrink_x = max(rx - radius - 1, 1) / rx
    return cy + rho * ry * shrink_y * np.sin(theta), cx + rho * rx * shrink_x * np.cos(theta)


#: the marker's height and width ranges (px at size 128) and intensity range (before the site's
#: contrast): large and white enough that the demo classifier learns it as a shortcut for effusion
#: (smaller or dimmer labels were learned only in part, depending on torch's thread count)
MARKER_HEIGHT = (10.0, 12.0)
MARKER_WIDTH = (20.0, 28.0)
MARKER_LEVEL = (1.0, 1.0)


def _draw_marker(image: np.ndarray, rng: np.random.Generator, size: int,
                 body: np.ndarray) -> np.ndarray:
    """A bright rectangle - a burned-in film label - in one image corner, outside the body (its
    inner corner is cut off where it would reach the body, so it never touches anatomy).

    Every draw comes from ``rng`` (the marker's own stream), so the rest of the image is the same
    with or without it."""
    s = size / 128.0
    h = rng.uniform(*MARKER_HEIGHT) * s
    w = rng.uniform(*MARKER_WIDTH) * s
    y0 = rng.uniform(2.0, 5.0) * s
    x0 = rng.uniform(2.0, 5.0) * s
    top, left = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    if not top:
        y0 = size - y0 - h
    if not left:
        x0 = size - x0 - w
    yy, xx = np.mgrid[:size, :size]
    box = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w) & ~body
    return np.where(box, rng.uniform(*MARKER_LEVEL), image)


def generate_phantom(rng: np.random.Generator, size: int, site_name: str,
                     prevalence: Sequence[float], *,
                     marker_rng: np.random.Generator | None = None,
                     marker_rates: tuple[float, float] = (0.0, 0.0)) -> Phantom:
    """Draw one synthetic chest-like slice at ``site_name`` (see the module docstring).

    ``marker_rates`` = the probability of the unnamed marker given (no effusion, effusion), drawn
    from ``marker_rng`` only: every label, metadata value and pixel away from the marker comes
    from ``rng`` and is the same whether or not the marker is drawn (the 2x down/up-sampling of
    sites C and D spreads its edge by a pixel or two, outside the lungs)."""
    site = SITES[site_name]
    shape = (size, size)
    s = size / 128.0
    c = size / 2
    body = _ellipse(shape, c + 2 * s, c, 58 * s, 54 * s) <= 1
    image = np.where(body, 0.45, 0.02)
    lungs = []
    for side in (-1, 1):
        lung = (c - 4 * s + rng.uniform(-2, 2) * s, c + side * 24 * s,
                rng.uniform(34, 38) * s, rng.uniform(17, 20) * s)
        lungs.append(lung)
        image = np.where(_ellipse(shape, *lung) <= 1, 0.12, image)
    lung_mask = np.zeros(shape, bool)
    for lung in lungs:
        lung_mask |= _ellipse(shape, *lung) <= 1
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0 * s)
    image = image + np.where(lung_mask, 0.05 * texture / (texture.std() + 1e-8), 0.0)
    spine = _ellipse(shape, c + 40 * s, c, 8 * s, 8 * s) <= 1
    image = np.where(spine, 0.85, image)
    mediastinum = (_ellipse(shape, c + 5 * s, c, 30 * s, 6 * s) <= 1) & ~lung_mask
    image = np.where(mediastinum, 0.55, image)

    labels = {name: int(rng.random() < p) for name, p in zip(FINDINGS, prevalence, strict=True)}
    mask = np.zeros(shape, np.uint8)
    sizes, locations, shapes = [], [], []
    yy, xx = np.mgrid[:size, :size]
    lung_order = rng.permutation(2)
    if labels["nodule"]:
        small = rng.random() < 0.5
        radius = (rng.uniform(1.5, 2.5) if small else rng.uniform(4.0, 7.0)) * s
        central = bool(rng.random() < 0.5)
        cy, cx = _lesion_centre(rng, lungs[lung_order[0]], central, radius)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        image = np.where(disc, rng.uniform(0.55, 0.7), image)
        mask[disc] = 1
        sizes.append("small" if small else "large")
        locations.append("central" if central else "peripheral")
        shapes.append("solid")
    if labels["cavity"]:
        outer = rng.uniform(4.0, 8.0) * s
        inner = outer * rng.uniform(0.45, 0.6)
        central = bool(rng.random() < 0.5)
        cy, cx = _lesion_centre(rng, lungs[lung_order[1]], central, outer)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        ring = (r2 <= outer**2) & (r2 > inner**2)
        image = np.where(ring, rng.uniform(0.55, 0.7), image)
        image = np.where(r2 <= inner**2, 0.08, image)
        mask[ring] = 1
        sizes.append("large" if outer >= 4.0 * s else "small")
        locations.append("central" if central else "peripheral")
        shapes.append("hollow")
    if labels["effusion"]:
        cy, cx, ry, rx = lungs[int(rng.integers(2))]
        level = cy + ry * rng.uniform(0.35, 0.6)
        meniscus = level - 3 * s * np.cos((xx - cx) / rx * np.pi / 2)
        fluid = (_ellipse(shape, cy, cx, ry, rx) <= 1) & (yy >= meniscus) & (mask == 0)
        image = np.where(fluid, 0.42, image)

    mean = image[body].mean()  # the marker lies outside the body: it does not move the mean
    marker = False
    if marker_rng is not None:
        marker = bool(marker_rng.random() < marker_rates[labels["effusion"]])
        if marker:
            image = _draw_marker(image, marker_rng, size, body)
    image = mean + (image - mean) * site.contrast
    if site.downsample > 1:
        k = site.downsample
        small_img = image.reshape(size // k, k, size // k, k).mean(axis=(1, 3))
        image = ndimage.zoom(small_img, k, order=1)
    image = image + rng.standard_normal(shape) * site.noise_sd
    image = np.clip(image, 0.0, 1.0)

    area = int(mask.sum())
    metadata: dict[str, object] = {
        "site": site_name,
        "protocol": site.protocol,
        "pixel_spacing": site.pixel_spacing,
        "lesion_area_px": area,
        "lesion_size": "none" if not sizes else ("small" if "small" in sizes else "large"),
        "location": "none" if not locations else (
            locations[0] if len(set(locations)) == 1 else "mixed"),
        "shape": "none" if not shapes else (shapes[0] if len(set(shapes)) == 1 else "mixed"),
        "n_lesions": len(shapes),
    }
    return Phantom(image=image, mask=mask, labels=labels, metadata=metadata, marker=marker)


def _sites_for(n: int, mix: dict[str, float], rng: np.random.Generator) -> list[str]:
    names = sorted(mix)
    counts = np.floor(np.array([mix[k] for k in names]) * n).astype(int)
    counts[0] += n - counts.sum()
    sites = [name for name, k in zip(names, counts, strict=True) for _ in range(k)]
    return [sites[i] for i in rng.permutation(n)]


def _marker_rates(split: str, config: PhantomConfig) -> tuple[float, float]:
    """P(marker | no effusion), P(marker | effusion) in ``split``."""
    if split == "train":
        return config.marker_given_no_effusion_train, config.marker_given_effusion_train
    return config.marker_rate_eval, config.marker_rate_eval


def _flip_labels(label_rows: list[dict[str, Any]], meta_rows: list[dict[str, Any]],
                 split: str, config: PhantomConfig) -> list[dict[str, object]]:
    """Flip ``config.label_flips`` labels of the calibration split in place, from their own
    seeded stream; returns the answer key. Flips are unambiguous annotation errors, half in
    each direction: a present finding written absent on an image with no other lesion, and an
    absent one written present on an image with no lesion at all, both at the clean site A
    (the errors a reader would call obvious; a flip on an image the model itself gets wrong
    could not be told from the model's error by any label-issue method)."""
    if split != "calibration" or config.label_flips <= 0 or not label_rows:
        return []
    rng = np.random.default_rng(derive_seed(config.seed, split, "label_flips"))
    lesions = ("nodule", "cavity")
    flips: list[dict[str, object]] = []
    used: set[int] = set()
    for k in range(config.label_flips):
        target = config.label_flip_targets[int(rng.integers(len(config.label_flip_targets)))]
        present = k % 2 == 0  # alternate directions: 1 -> 0, then 0 -> 1
        others = [t for t in lesions if t != target]
        fits = [i for i, (lab, meta) in enumerate(zip(label_rows, meta_rows, strict=True))
                if i not in used and meta["site"] == "A" and lab[target] == int(present)
                and not any(lab[t] for t in others)]
        if not fits:
            continue
        i = fits[int(rng.integers(len(fits)))]
        used.add(i)
        true = int(label_rows[i][target])
        label_rows[i][target] = 1 - true
        flips.append({"id": label_rows[i]["id"], "target": target, "true_label": true,
                      "written_label": 1 - true})
    return sorted(flips, key=lambda f: str(f["id"]))


def _write_split(out_dir: Path, split: str, n: int, config: PhantomConfig
                 ) -> tuple[Path, list[str], list[dict[str, object]]]:
    root = Path(out_dir) / split
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    mix = {"train": config.site_mix_train, "shift": {"D": 1.0}}.get(split, config.site_mix_test)
    sites = _sites_for(n, mix, np.random.default_rng(derive_seed(config.seed, split, "sites")))
    rates = _marker_rates(split, config)
    label_rows, meta_rows, marked = [], [], []
    for i, site in enumerate(sites):
        rng = np.random.default_rng(derive_seed(config.seed, split, str(i)))
        marker_rng = np.random.default_rng(derive_seed(config.seed, split, str(i), "marker"))
        ph = generate_phantom(rng, config.size, site, config.prevalence, marker_rng=marker_rng,
                              marker_rates=rates)
        sid = f"{split}_{i:04d}"
        Image.fromarray(np.round(ph.image * 255).astype(np.uint8)).save(
            root / "images" / f"{sid}.png")
        Image.fromarray(ph.mask).save(root / "masks" / f"{sid}.png")
        label_rows.append({"id": sid, **ph.labels})
        meta_rows.append({"id": sid, **ph.metadata})
        if ph.marker:
            marked.append(sid)
    flips = _flip_labels(label_rows, meta_rows, split, config)
    (root / "classes.txt").write_text("\n".join(MASK_CLASSES) + "\n")
    pd.DataFrame(label_rows).to_csv(root / "labels.csv", index=False)
    pd.DataFrame(meta_rows).to_csv(root / "metadata.csv", index=False)
    return root, marked, flips


def write_split(out_dir: Path, split: str, n: int, config: PhantomConfig) -> Path:
    """Write one split in the folder format: images/, masks/, labels.csv, metadata.csv (the
    planted marker and label flips included; their answer key is ``write_phantom_splits``')."""
    return _write_split(out_dir, split, n, config)[0]


PLANTED_DESCRIPTION = (
    "Answer key of the effects no metadata column names (for tests and docs; medfail never "
    "reads it). marker: per split, the ids whose image carries a bright rectangle (a burned-in "
    "film label) in a corner outside the body; in train it is drawn with "
    "P(marker | effusion) = {pe} and P(marker | no effusion) = {pn} - a spurious correlation a "
    "classifier can learn as a shortcut - and in the other splits with P = {pv} whatever the "
    "labels. label_flips: (id, target) labels of the calibration split written flipped in "
    "labels.csv (true_label = what the image shows)."
)


def write_phantom_splits(out_dir: Path, config: PhantomConfig | None = None) -> dict[str, Path]:
    """Write train/calibration/test/shift splits under ``out_dir`` (skipped when already written).

    A ``phantoms.json`` file records the config; a folder written with another config is rewritten.
    ``planted.json`` beside it is the answer key of the unnamed marker and the flipped
    calibration labels (tests and docs only: nothing in medfail reads it).
    """
    config = config or PhantomConfig()
    out_dir = Path(out_dir)
    stamp = out_dir / "phantoms.json"
    splits = {"train": config.n_train, "calibration": config.n_calibration, "test": config.n_test,
              "shift": config.n_shift}
    paths = {name: out_dir / name for name in splits}
    if stamp.exists() and stamp.read_text() == config.to_json() and (
            out_dir / "planted.json").exists():
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    markers: dict[str, list[str]] = {}
    label_flips: list[dict[str, object]] = []
    for name, n in splits.items():
        _, markers[name], flips = _write_split(out_dir, name, n, config)
        label_flips += flips
    planted = {"marker": markers, "label_flips": label_flips,
               "description": PLANTED_DESCRIPTION.format(
                   pe=config.marker_given_effusion_train,
                   pn=config.marker_given_no_effusion_train, pv=config.marker_rate_eval)}
    (out_dir / "planted.json").write_text(json.dumps(planted, indent=1) + "\n")
    (out_dir / "README.txt").write_text(
        "SYNTHETIC phantom images generated by medfail.data.phantoms - not patient data.\n")
    stamp.write_text(config.to_json())
    return paths
