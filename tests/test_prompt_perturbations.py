"""Prompt perturbations: bounds, reproducibility, monotone severities and the semantics of each."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medfail.data.prompts import Prompt, objects, prompt_for_object, prompts_from_mask
from medfail.errors import MedfailInputError
from medfail.stress import registry
from medfail.stress.prompt_perturbations import PROMPT_TESTS, prompt_table_rows
from medfail.stress.registry import perturb_prompts

SIZE = 64
SEVERITIES = (1, 2, 3)
EXPECTED = {"box_shift", "box_scale_jitter", "box_loose", "box_tight", "point_jitter",
            "point_background", "point_neighbour", "missing_point", "extra_point"}


def _label_map() -> np.ndarray:
    """Two discs (labels 1 and 2) and a ring (label 1), none touching."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    lm = np.zeros((SIZE, SIZE), np.int32)
    lm[(yy - 18) ** 2 + (xx - 18) ** 2 <= 8**2] = 1           # big disc, top left
    lm[(yy - 16) ** 2 + (xx - 48) ** 2 <= 5**2] = 2           # small disc, top right
    d2 = (yy - 46) ** 2 + (xx - 30) ** 2
    lm[(d2 <= 11**2) & (d2 >= 7**2)] = 1                      # ring, bottom
    return lm


def _single_disc() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return ((yy - 32) ** 2 + (xx - 32) ** 2 <= 6**2).astype(np.int32)


LABEL_MAP = _label_map()
OBJECTS = objects(LABEL_MAP)
CASES = [(name, sev, k) for name in sorted(EXPECTED) for sev in SEVERITIES
         for k in range(len(OBJECTS))]


def _apply(name: str, sev: int, k: int, seed: int, label_map: np.ndarray = LABEL_MAP,
           prompt: Prompt | None = None) -> tuple[Prompt, Prompt, np.ndarray]:
    test = registry.get(name)
    obj = objects(label_map)[k]
    clean = prompt if prompt is not None else prompt_for_object(obj)
    return test.apply(clean, obj, label_map, test.params(sev),  # type: ignore[call-arg]
                      np.random.default_rng(seed)), clean, obj


def _pos(p: Prompt) -> tuple[float, float]:
    return p.points[p.point_labels.index(1)]


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _displacement(name: str, sev: int, n: int = 60) -> float:
    """Mean displacement over n draws: positive point, box corners (loose/tight/jitter) or box
    centre (shift)."""
    out = []
    for k in range(len(OBJECTS)):
        for seed in range(n):
            new, clean, _ = _apply(name, sev, k, seed)
            if name.startswith("point"):
                out.append(math.dist(_pos(new), _pos(clean)))
            elif name in ("box_loose", "box_tight", "box_scale_jitter"):  # corners move
                out.append(sum(abs(a - b) for a, b in zip(new.box, clean.box, strict=True)))
            else:
                out.append(math.dist(_centre(new.box), _centre(clean.box)))
    return float(np.mean(out))


def test_registered_with_three_monotone_severities() -> None:
    assert set(PROMPT_TESTS) == EXPECTED
    for name in EXPECTED:
        t = registry.get(name)
        assert (t.family, t.taxonomy, t.modalities) == ("prompt", "human_factors", ("any",))
        (key,) = t.severities[0]
        values = [p[key] for p in t.severities]
        assert values == sorted(values) and len(set(values)) == 3, name
    rows = {r["name"]: r for r in registry.list_rows()}
    assert rows["box_shift"]["severities"] == "shift=0.1/0.25/0.5"


@pytest.mark.parametrize(("name", "sev", "k"), CASES)
def test_bounds_validity_and_reproducibility(name: str, sev: int, k: int) -> None:
    for seed in range(5):
        new, _, _ = _apply(name, sev, k, seed)
        again, _, _ = _apply(name, sev, k, seed)
        assert new == again
        assert new.box is not None
        x0, y0, x1, y1 = new.box
        assert 0 <= x0 <= x1 <= SIZE - 1 and 0 <= y0 <= y1 <= SIZE - 1
        assert len(new.points) == len(new.point_labels)
        for x, y in new.points:
            assert 0 <= x <= SIZE - 1 and 0 <= y <= SIZE - 1


@pytest.mark.parametrize("name", ["box_shift", "box_scale_jitter", "point_jitter",
                                  "point_background", "point_neighbour", "extra_point"])
def test_random_tests_depend_on_the_seed(name: str) -> None:
    draws = {_apply(name, 2, 0, seed)[0] for seed in range(10)}
    assert len(draws) > 1


@pytest.mark.parametrize("name", ["box_shift", "box_scale_jitter", "box_loose", "box_tight",
                                  "point_jitter", "point_background", "point_neighbour"])
def test_displacement_grows_with_severity(name: str) -> None:
    d = [_displacement(name, sev) for sev in SEVERITIES]
    assert 0 < d[0] < d[1] < d[2], (name, d)


def test_box_shift_moves_by_the_fraction() -> None:
    for sev, s in zip(SEVERITIES, (0.10, 0.25, 0.50), strict=True):
        new, clean, _ = _apply("box_shift", sev, 0, seed=3)
        w = clean.box[2] - clean.box[0] + 1
        h = clean.box[3] - clean.box[1] + 1
        dx = _centre(new.box)[0] - _centre(clean.box)[0]
        dy = _centre(new.box)[1] - _centre(clean.box)[1]
        assert (dx / (s * w)) ** 2 + (dy / (s * h)) ** 2 == pytest.approx(1.0)
        # size unchanged (the big disc is away from the border)
        assert new.box[2] - new.box[0] == pytest.approx(clean.box[2] - clean.box[0])


def test_loose_contains_and_tight_is_inside() -> None:
    for sev in SEVERITIES:
        loose, clean, _ = _apply("box_loose", sev, 0, 0)
        tight, _, _ = _apply("box_tight", sev, 0, 0)
        assert loose.box[0] < clean.box[0] and loose.box[2] > clean.box[2]
        assert loose.box[1] < clean.box[1] and loose.box[3] > clean.box[3]
        assert clean.box[0] < tight.box[0] <= tight.box[2] < clean.box[2]
        assert clean.box[1] < tight.box[1] <= tight.box[3] < clean.box[3]


def test_tight_box_on_a_single_pixel_never_inverts() -> None:
    lm = np.zeros((8, 8), np.int32)
    lm[3, 5] = 1
    for sev in SEVERITIES:
        new, _, _ = _apply("box_tight", sev, 0, 0, label_map=lm)
        assert new.box == (5.0, 3.0, 5.0, 3.0)


def test_box_loose_clips_at_the_border() -> None:
    lm = np.zeros((16, 16), np.int32)
    lm[0:6, 10:16] = 1
    new, _, _ = _apply("box_loose", 3, 0, 0, label_map=lm)
    assert new.box[1] == 0 and new.box[2] == 15


@pytest.mark.parametrize("sev", SEVERITIES)
def test_point_jitter_distance(sev: int) -> None:
    target = registry.get("point_jitter").params(sev)["distance_px"]
    for seed in range(10):
        new, clean, _ = _apply("point_jitter", sev, 0, seed)
        assert math.dist(_pos(new), _pos(clean)) == pytest.approx(target)
        assert new.box == clean.box


@pytest.mark.parametrize("sev", SEVERITIES)
@pytest.mark.parametrize("k", range(3))
def test_point_background_lands_on_background_at_target(sev: int, k: int) -> None:
    target = registry.get("point_background").params(sev)["distance_px"]
    for seed in range(10):
        new, _, obj = _apply("point_background", sev, k, seed)
        x, y = _pos(new)
        assert x == int(x) and y == int(y)
        assert LABEL_MAP[int(y), int(x)] == 0
        dist = ndimage.distance_transform_edt(~obj)[int(y), int(x)]
        assert abs(dist - target) <= 0.5


@pytest.mark.parametrize("sev", SEVERITIES)
@pytest.mark.parametrize("k", range(3))
def test_point_neighbour_lands_on_another_structure(sev: int, k: int) -> None:
    radius = registry.get("point_neighbour").params(sev)["radius_px"]
    for seed in range(10):
        new, _, obj = _apply("point_neighbour", sev, k, seed)
        x, y = (int(v) for v in _pos(new))
        assert LABEL_MAP[y, x] > 0 and not obj[y, x]
        dist = ndimage.distance_transform_edt(~obj)
        others = (LABEL_MAP > 0) & ~obj
        nearest = dist[others].min()
        assert dist[y, x] <= max(radius, nearest) + 1e-6


def test_point_neighbour_prefers_the_nearest_structure() -> None:
    # object 1 is the ring (bottom); its nearest other structure is the big disc
    big_disc = OBJECTS[0]
    for seed in range(10):
        new, _, _ = _apply("point_neighbour", 3, 1, seed)
        x, y = (int(v) for v in _pos(new))
        assert big_disc[y, x]


@pytest.mark.parametrize("sev", SEVERITIES)
def test_point_neighbour_fallback_is_far_background(sev: int) -> None:
    lm = _single_disc()
    radius = registry.get("point_neighbour").params(sev)["radius_px"]
    for seed in range(5):
        new, _, obj = _apply("point_neighbour", sev, 0, seed, label_map=lm)
        x, y = (int(v) for v in _pos(new))
        assert lm[y, x] == 0
        d = ndimage.distance_transform_edt(~obj)
        within = (lm == 0) & (d <= radius)
        assert d[y, x] == pytest.approx(d[within].max())


@pytest.mark.parametrize("sev", SEVERITIES)
def test_missing_point_drops_points_and_shifts_box(sev: int) -> None:
    shift = registry.get("missing_point").params(sev)["shift"]
    new, clean, _ = _apply("missing_point", sev, 0, 7)
    assert new.points == () and new.point_labels == ()
    moved = math.dist(_centre(new.box), _centre(clean.box))
    assert (moved == 0) == (shift == 0)


@pytest.mark.parametrize("sev", SEVERITIES)
@pytest.mark.parametrize("k", range(3))
def test_extra_point_adds_negatives_inside_the_object(sev: int, k: int) -> None:
    n = registry.get("extra_point").params(sev)["n_points"]
    for seed in range(5):
        new, clean, obj = _apply("extra_point", sev, k, seed)
        assert new.points[:len(clean.points)] == clean.points
        assert new.box == clean.box
        added = new.points[len(clean.points):]
        assert len(added) == n and new.point_labels[len(clean.points):] == (0,) * n
        assert len(set(added)) == n and not set(added) & set(clean.points)
        for x, y in added:
            assert obj[int(y), int(x)]


def test_point_tests_add_a_point_to_box_only_prompts() -> None:
    obj = OBJECTS[0]
    box_only = Prompt(prompt_for_object(obj).box)
    new, _, _ = _apply("point_jitter", 1, 0, 0, prompt=box_only)
    assert new.point_labels == (1,) and new.box == box_only.box


def _batch() -> tuple[list[list[Prompt]], list[np.ndarray], list[str]]:
    masks = [LABEL_MAP, _single_disc(), LABEL_MAP[::-1].copy()]
    return [prompts_from_mask(m) for m in masks], masks, ["a", "b", "c"]


@pytest.mark.parametrize("condition", ["box_shift@2", "point_neighbour@3", "extra_point@1"])
def test_perturb_prompts_independent_of_batch_and_order(condition: str) -> None:
    prompts, masks, ids = _batch()
    full = perturb_prompts(prompts, masks, ids, condition, run_seed=11)
    order = [2, 0, 1]
    shuffled = perturb_prompts([prompts[i] for i in order], [masks[i] for i in order],
                               [ids[i] for i in order], condition, run_seed=11)
    for j, i in enumerate(order):
        assert shuffled[j] == full[i]
    single = perturb_prompts(prompts[1:2], masks[1:2], ids[1:2], condition, run_seed=11)
    assert single[0] == full[1]
    other_seed = perturb_prompts(prompts, masks, ids, condition, run_seed=12)
    assert other_seed != full
    assert [len(p) for p in full] == [len(p) for p in prompts]


def test_perturb_prompts_clean_and_errors() -> None:
    prompts, masks, ids = _batch()
    assert perturb_prompts(prompts, masks, ids, "clean", 0) == prompts
    with pytest.raises(MedfailInputError):
        perturb_prompts(prompts, masks, ids, "gaussian_noise@1", 0)
    with pytest.raises(MedfailInputError):
        perturb_prompts(prompts, masks, ids, "no_such_test@1", 0)
    with pytest.raises(ValueError):
        perturb_prompts(prompts, masks[:2], ids, "box_shift@1", 0)
    with pytest.raises(ValueError):
        perturb_prompts([prompts[0] * 2], masks[:1], ids[:1], "box_shift@1", 0)


def test_prompt_table_rows() -> None:
    prompts, masks, ids = _batch()
    pert = perturb_prompts(prompts, masks, ids, "extra_point@2", 0)
    rows = prompt_table_rows(pert, ids, "extra_point@2")
    assert len(rows) == sum(len(p) for p in pert)
    assert rows[0]["n_points"] == 3 and rows[0]["n_negative"] == 2
    assert rows[0]["point_label"] == 1 and rows[0]["points_label"] == [1, 0, 0]
    boxless = prompt_table_rows([[Prompt(None)]], ["z"])
    assert math.isnan(boxless[0]["box_x0"]) and boxless[0]["point_label"] == -1
