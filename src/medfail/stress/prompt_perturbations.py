"""Prompt perturbations for promptable segmenters (family ``prompt``, taxonomy ``human_factors``).

They model how a human (or an upstream detector) gets a prompt wrong: a shifted, jittered, loose
or tight box, a positive click that slips off the object, lands on the background or on another
structure, a forgotten click, or a mistaken "not this" click inside the object. The image is never
touched. Severity 0 is the exact prompt of :func:`medfail.data.prompts.prompt_for_object`.

Each test is a :class:`~medfail.stress.spec.PromptTest`: its ``apply`` works on ONE prompt,
``apply(prompt, obj, label_map, params, rng) -> Prompt`` (see :mod:`medfail.stress.spec`), and
returns a new prompt. Coordinates follow the prompt convention (``(x, y)`` = (column, row),
inclusive box corners); boxes and points are always clipped to the image and boxes never invert
(``x0 <= x1``, ``y0 <= y1``). Coordinates may be sub-pixel (SAM accepts floats).

The severities are written once, in the ``@_prompt_test`` decorators below (collected in
:data:`PROMPT_PERTURBATIONS`); the catalogue :mod:`medfail.stress.registry` collects them,
``medfail list`` prints them and tests/test_stress_catalogue.py checks the table of
docs/prompts.md against them.

Box sizes are measured in pixel edges: a box ``(x0, y0, x1, y1)`` spans ``x1 − x0 + 1`` columns,
so a one-pixel object still has a box of size 1. Details:

* ``point_neighbour``: the nearest other structure is the 8-connected component of
  ``label_map > 0`` outside ``obj`` with the smallest distance to the object (ties by rng); the
  point lands on a random pixel of it within ``radius_px`` of the object (on its nearest pixels
  if it starts farther away). **Fallback** when the image has no other structure: the background
  pixel farthest from the object within ``radius_px`` (ties by rng).
* Point tests move the first positive point; a prompt without one starts from the object's
  interior point. ``point_background`` / ``point_neighbour`` leave the prompt unchanged when the
  image has no pixel of the required kind.
* Box tests (and ``missing_point``) use the object's exact box when the prompt has none.
* ``extra_point`` picks distinct object pixels other than the existing points when it can.

:func:`medfail.stress.registry.perturb_prompts` applies a condition to a batch with one
generator per object, ``sample_rng(run_seed, condition, f"{id}#{k}")``, so results never depend
on batch size or order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from scipy import ndimage

from medfail.data.prompts import EIGHT_CONNECTED, Prompt, prompt_for_object
from medfail.stress.spec import CLEAN, PROMPT_FAMILY, PromptTest

if TYPE_CHECKING:
    from medfail.stress.spec import PromptApply

__all__ = [
    "PROMPT_PERTURBATIONS",
    "PROMPT_TESTS",
    "as_2d",
    "prompt_table_rows",
]

FAMILY = PROMPT_FAMILY
TAXONOMY = "human_factors"
_TIE_TOL = 1e-6

_TABLE: list[PromptTest] = []


def _prompt_test(name: str, severities: tuple[dict[str, Any], ...], description: str,
                 unit: str) -> Callable[[PromptApply], PromptApply]:
    """File a per-prompt function, with its three severities, as a ``prompt``-family test."""

    def decorator(fn: PromptApply) -> PromptApply:
        _TABLE.append(PromptTest(name=name, family=FAMILY, taxonomy=TAXONOMY,
                                 modalities=("any",), severities=severities,
                                 description=description, unit=unit, apply=fn))
        return fn

    return decorator


# --- geometry helpers -------------------------------------------------------------------------

Box = tuple[float, float, float, float]


def _box_of(prompt: Prompt, obj: np.ndarray) -> Box:
    """The prompt's box, or the object's exact box when it has none."""
    if prompt.box is not None:
        return cast(Box, tuple(float(v) for v in prompt.box))
    box = prompt_for_object(obj).box
    assert box is not None
    return box


def _axis(lo_edge: float, hi_edge: float, n: int) -> tuple[float, float]:
    """Pixel edges -> inclusive coordinates on an axis of ``n`` pixels (never inverted)."""
    a, b = lo_edge + 0.5, hi_edge - 0.5
    if b < a:
        a = b = (a + b) / 2.0
    return float(np.clip(a, 0, n - 1)), float(np.clip(b, 0, n - 1))


def _edges_to_box(left: float, top: float, right: float, bottom: float,
                  shape: tuple[int, ...]) -> Box:
    x0, x1 = _axis(left, right, shape[1])
    y0, y1 = _axis(top, bottom, shape[0])
    return x0, y0, x1, y1


def _edges(box: Box) -> tuple[float, float, float, float, float, float]:
    """``(left, top, right, bottom, width, height)`` of a box in pixel-edge units."""
    x0, y0, x1, y1 = box
    left, top, right, bottom = x0 - 0.5, y0 - 0.5, x1 + 0.5, y1 + 0.5
    return left, top, right, bottom, right - left, bottom - top


def _shift_box(box: Box, shift: float, shape: tuple[int, ...], rng: np.random.Generator) -> Box:
    """Translate by ``shift`` × (width, height) along a random direction (no draw when 0)."""
    if shift == 0:
        return _edges_to_box(*_edges(box)[:4], shape)
    left, top, right, bottom, w, h = _edges(box)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    dx, dy = shift * w * math.cos(theta), shift * h * math.sin(theta)
    return _edges_to_box(left + dx, top + dy, right + dx, bottom + dy, shape)


def _clip_point(x: float, y: float, shape: tuple[int, ...]) -> tuple[float, float]:
    return float(np.clip(x, 0, shape[1] - 1)), float(np.clip(y, 0, shape[0] - 1))


def _positive(prompt: Prompt, obj: np.ndarray) -> tuple[Prompt, int]:
    """The prompt with a positive point guaranteed, and that point's index."""
    for i, lab in enumerate(prompt.point_labels):
        if lab == 1:
            return prompt, i
    point = prompt_for_object(obj).points[0]
    added = Prompt(prompt.box, (*prompt.points, point), (*prompt.point_labels, 1))
    return added, len(prompt.points)


def _move_point(prompt: Prompt, obj: np.ndarray,
                where: Callable[[tuple[float, float]], tuple[float, float] | None]) -> Prompt:
    """Replace the positive point by ``where(old point)`` (``None`` = leave the prompt as is)."""
    base, i = _positive(prompt, obj)
    new = where(base.points[i])
    if new is None:
        return prompt
    points = list(base.points)
    points[i] = (float(new[0]), float(new[1]))
    return Prompt(base.box, tuple(points), base.point_labels)


def _distance_to(obj: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest object pixel (0 on the object)."""
    return cast(np.ndarray, ndimage.distance_transform_edt(~obj))


def _pick(rng: np.random.Generator, candidates: np.ndarray) -> tuple[float, float]:
    """One ``(x, y)`` out of a boolean candidate image, uniformly by ``rng``."""
    rows, cols = np.nonzero(candidates)
    j = int(rng.integers(len(rows)))
    return float(cols[j]), float(rows[j])


def as_2d(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` as an (H, W) array (leading size-1 axes dropped); ``what`` names it in the error."""
    a = np.asarray(a)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) array, got shape {a.shape}")
    return a


# --- the tests --------------------------------------------------------------------------------

@_prompt_test("box_shift", ({"shift": 0.10}, {"shift": 0.25}, {"shift": 0.50}),
              "box translated in a random direction", "fraction of box width/height")
def box_shift(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
              params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Translate the box by ``shift`` of its size in a random direction."""
    box = _shift_box(_box_of(prompt, obj), float(params["shift"]), obj.shape, rng)
    return Prompt(box, prompt.points, prompt.point_labels)


@_prompt_test("box_scale_jitter", ({"jitter": 0.10}, {"jitter": 0.25}, {"jitter": 0.50}),
              "each box side scaled by its own random factor",
              "factor range ±j around 1 of each side's distance from the box centre")
def box_scale_jitter(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
                     params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Scale each side's distance from the centre by an independent factor in [1−j, 1+j]."""
    j = float(params["jitter"])
    left, top, right, bottom, w, h = _edges(_box_of(prompt, obj))
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    f = rng.uniform(1.0 - j, 1.0 + j, size=4)
    box = _edges_to_box(cx - f[0] * w / 2, cy - f[1] * h / 2, cx + f[2] * w / 2,
                        cy + f[3] * h / 2, obj.shape)
    return Prompt(box, prompt.points, prompt.point_labels)


@_prompt_test("box_loose", ({"expand": 0.10}, {"expand": 0.30}, {"expand": 0.60}),
              "box too loose: every side pushed out", "fraction of box width/height per side")
def box_loose(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
              params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Push every side out by ``expand`` of the box size (clipped to the image)."""
    e = float(params["expand"])
    left, top, right, bottom, w, h = _edges(_box_of(prompt, obj))
    box = _edges_to_box(left - e * w, top - e * h, right + e * w, bottom + e * h, obj.shape)
    return Prompt(box, prompt.points, prompt.point_labels)


@_prompt_test("box_tight", ({"shrink": 0.10}, {"shrink": 0.20}, {"shrink": 0.35}),
              "box too tight: every side pulled in", "fraction of box width/height per side")
def box_tight(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
              params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Pull every side in by ``shrink`` of the box size (a too-thin box collapses to its centre)."""
    s = float(params["shrink"])
    left, top, right, bottom, w, h = _edges(_box_of(prompt, obj))
    box = _edges_to_box(left + s * w, top + s * h, right - s * w, bottom - s * h, obj.shape)
    return Prompt(box, prompt.points, prompt.point_labels)


@_prompt_test("point_jitter", ({"distance_px": 2}, {"distance_px": 5}, {"distance_px": 10}),
              "positive point moved in a random direction", "pixels")
def point_jitter(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
                 params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Move the positive point ``distance_px`` in a random direction (clipped to the image)."""
    d = float(params["distance_px"])
    theta = rng.uniform(0.0, 2.0 * math.pi)
    return _move_point(prompt, obj, lambda p: _clip_point(
        p[0] + d * math.cos(theta), p[1] + d * math.sin(theta), obj.shape))


@_prompt_test("point_background",
              ({"distance_px": 2}, {"distance_px": 5}, {"distance_px": 10}),
              "positive point on a background pixel near the object",
              "target distance from the object in pixels")
def point_background(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
                     params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Move the positive point to the background pixel nearest ``distance_px`` from the object."""
    target = float(params["distance_px"])
    background = as_2d(label_map, "label_map") == 0
    if not background.any() or not obj.any():
        return prompt
    err = np.where(background, np.abs(_distance_to(obj) - target), np.inf)
    return _move_point(prompt, obj, lambda p: _pick(rng, err <= err.min() + _TIE_TOL))


@_prompt_test("point_neighbour", ({"radius_px": 10}, {"radius_px": 20}, {"radius_px": 40}),
              "positive point on another labelled structure (nearest first)",
              "search radius around the object in pixels")
def point_neighbour(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
                    params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Move the positive point onto the nearest other structure (fallback: far background)."""
    radius = float(params["radius_px"])
    lm = as_2d(label_map, "label_map")
    if not obj.any():
        return prompt
    dist = _distance_to(obj)
    labelled, n = ndimage.label((lm > 0) & ~obj, structure=EIGHT_CONNECTED)
    if n:
        nearest = np.asarray(ndimage.minimum(dist, labelled, index=np.arange(1, n + 1)))
        ties = np.flatnonzero(nearest <= nearest.min() + _TIE_TOL)
        k = int(ties[rng.integers(len(ties))])
        reach = max(radius, float(nearest[k]))
        candidates = (labelled == k + 1) & (dist <= reach + _TIE_TOL)
    else:
        near = (lm == 0) & (dist <= radius)
        if not near.any():
            return prompt
        far = dist[near].max()
        candidates = near & (dist >= far - _TIE_TOL)
    return _move_point(prompt, obj, lambda p: _pick(rng, candidates))


@_prompt_test("missing_point", ({"shift": 0.0}, {"shift": 0.10}, {"shift": 0.25}),
              "points dropped (box only), box shifted at higher severities",
              "box shift as a fraction of box width/height")
def missing_point(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
                  params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Drop every point; shift the box by ``shift`` of its size (0 = exact box)."""
    return Prompt(_shift_box(_box_of(prompt, obj), float(params["shift"]), obj.shape, rng))


@_prompt_test("extra_point", ({"n_points": 1}, {"n_points": 2}, {"n_points": 3}),
              "wrong negative clicks inside the object", "number of negative points")
def extra_point(prompt: Prompt, obj: np.ndarray, label_map: np.ndarray,
                params: Mapping[str, Any], rng: np.random.Generator) -> Prompt:
    """Add ``n_points`` negative (label 0) points on random object pixels."""
    n = int(params["n_points"])
    rows, cols = np.nonzero(obj)
    if n <= 0 or len(rows) == 0:
        return prompt
    taken = {(round(x), round(y)) for x, y in prompt.points}
    free = np.array([(c, r) not in taken for r, c in zip(rows, cols, strict=True)])
    if free.sum() >= n:
        rows, cols = rows[free], cols[free]
    idx = rng.choice(len(rows), size=n, replace=len(rows) < n)
    new = tuple((float(cols[i]), float(rows[i])) for i in idx)
    return Prompt(prompt.box, (*prompt.points, *new), (*prompt.point_labels, *([0] * n)))


# --- the table and batch helpers --------------------------------------------------------------

#: The prompt tests, in documentation order (each with its three severities).
PROMPT_PERTURBATIONS: tuple[PromptTest, ...] = tuple(_TABLE)

#: Names of the prompt tests, in documentation order.
PROMPT_TESTS: list[str] = [t.name for t in PROMPT_PERTURBATIONS]


def prompt_table_rows(prompts_per_image: Sequence[Sequence[Prompt]], ids: Sequence[str],
                      condition: str = CLEAN) -> list[dict[str, Any]]:
    """One row per (sample, object) describing its prompt, e.g. for ``prompts.parquet``.

    Columns: ``id, condition, object, box_x0, box_y0, box_x1, box_y1`` (NaN without a box),
    ``point_x, point_y, point_label`` (the first point; NaN / -1 without one), ``n_points``,
    ``n_negative`` and ``points_x, points_y, points_label`` (lists of every point).
    """
    rows: list[dict[str, Any]] = []
    for plist, sid in zip(prompts_per_image, ids, strict=True):
        for k, p in enumerate(plist):
            x0, y0, x1, y1 = p.box if p.box is not None else (math.nan,) * 4
            px, py = p.points[0] if p.points else (math.nan, math.nan)
            rows.append({
                "id": sid, "condition": condition, "object": k,
                "box_x0": float(x0), "box_y0": float(y0), "box_x1": float(x1),
                "box_y1": float(y1), "point_x": float(px), "point_y": float(py),
                "point_label": int(p.point_labels[0]) if p.points else -1,
                "n_points": len(p.points),
                "n_negative": sum(1 for lab in p.point_labels if lab == 0),
                "points_x": [float(x) for x, _ in p.points],
                "points_y": [float(y) for _, y in p.points],
                "points_label": [int(lab) for lab in p.point_labels],
            })
    return rows
