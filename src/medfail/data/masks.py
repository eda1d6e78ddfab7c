"""How a dataset's mask values are read: binary, semantic classes or instance maps.

Masks arrive as 0/1 or 0/255 (or 0/65535, bool, float 0.0/1.0) binary maps, as semantic label
maps (0 = background, class k = label k) or as instance maps (one integer per object, as
NuInsSeg, MoNuSeg and DSB2018 ship them). ``mask_mode`` says which:

* ``binary``: foreground = any non-zero value, read as label 1.
* ``classes``: every value is a class index (label k = the model's k-th foreground class).
* ``instances``: foreground = any non-zero value, read as label 1; the raw map is kept as
  ``Sample.instances`` so per-object metrics and prompts use one object per instance (touching
  objects stay separate).
* ``auto`` (default): decided once per dataset from every mask (:func:`decide`):

  1. no non-zero value anywhere -> ``binary`` (no foreground);
  2. every mask holds at most one non-zero value and each such value is 1, 255 or 65535
     -> ``binary``;
  3. some mask holds more than :data:`INSTANCE_MIN_LABELS` distinct non-zero labels: if, in every
     such mask, at most :data:`MAX_FRAGMENTED` of the labels are made of several 8-connected
     pieces -> ``instances``; otherwise refused (neither instance ids nor a small class set:
     e.g. grey levels of a resized, anti-aliased mask);
  3b. no mask holds that many, but the dataset as a whole does (object ids kept from a larger
     image, as tiles cut from one slide keep them) and every mask with at least
     :data:`FRAGMENT_CHECK_LABELS` labels has at most :data:`MAX_FRAGMENTED` of them in several
     pieces -> ``instances`` (a small class set never has that many labels);
  4. a single non-zero value v other than 1/255/65535 in every mask (0/2, 0/128) -> refused
     (binary with foreground v, or only class v?);
  5. a value >= 255 next to other labels (an "ignore" value, object ids) -> refused;
  6. otherwise -> ``classes`` (at most :data:`INSTANCE_MIN_LABELS` labels per image, all < 255).

Refusals raise :class:`~medfail.errors.MedfailInputError` naming the mask file and the option
that settles it. Labels the model does not know are checked by :func:`check_model_labels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfail.data.prompts import label_pieces
from medfail.errors import MedfailInputError, listing

MASK_MODES: tuple[str, ...] = ("auto", "binary", "classes", "instances")
#: an image with more distinct non-zero labels than this is an instance-map candidate
INSTANCE_MIN_LABELS = 20
#: largest share of labels in several pieces that an instance map may have
MAX_FRAGMENTED = 0.1
#: masks with at least this many labels get their pieces counted (rule 3b)
FRAGMENT_CHECK_LABELS = 4
#: the non-zero value of a binary mask: 0/1 (any dtype), 0/255 (8-bit), 0/65535 (16-bit)
BINARY_VALUES: tuple[int, ...] = (1, 255, 65535)
_SHOWN = 8


@dataclass(frozen=True)
class MaskStats:
    """What :func:`decide` needs from one raw mask.

    ``labels``: sorted distinct non-zero values (int64). ``fragmented``: how many labels are made
    of more than one connected piece (full connectivity); counted only for masks with at least
    :data:`FRAGMENT_CHECK_LABELS` labels, else 0.
    """

    shape: tuple[int, ...]
    labels: np.ndarray
    fragmented: int = 0


def check_mode(mode: str, where: str | Path | None = None) -> str:
    """``mode`` if it is one of :data:`MASK_MODES`, else ``MedfailInputError``."""
    if mode not in MASK_MODES:
        raise MedfailInputError(
            where, f"unknown mask mode '{mode}' (choose {', '.join(MASK_MODES)})")
    return mode


def fragmented_labels(mask: np.ndarray) -> int:
    """Number of non-zero labels of ``mask`` made of more than one connected piece."""
    return sum(1 for _, _, n in label_pieces(mask) if n > 1)


def mask_stats(mask: np.ndarray) -> MaskStats:
    """The :class:`MaskStats` of one raw integer mask."""
    labels = np.unique(mask)
    labels = labels[labels != 0].astype(np.int64)
    frag = fragmented_labels(mask) if len(labels) >= FRAGMENT_CHECK_LABELS else 0
    return MaskStats(tuple(int(n) for n in mask.shape), labels, frag)


def interpret(raw: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mask, instances)`` for a raw mask under a decided mode (not ``auto``).

    ``mask`` is int64 (binary/instances: 0/1); ``instances`` is the raw int64 map in
    ``instances`` mode, else ``None``.
    """
    if mode == "classes":
        return np.ascontiguousarray(raw, dtype=np.int64), None
    fg = (raw != 0).astype(np.int64)
    if mode == "instances":
        return fg, np.ascontiguousarray(raw, dtype=np.int64)
    if mode == "binary":
        return fg, None
    raise ValueError(f"mask mode must be decided (binary, classes or instances), got {mode!r}")


def _values(labels: Sequence[int] | np.ndarray, zero: bool = True) -> str:
    """``{0, 1, 255}``: the labels (with 0 first when ``zero``), at most :data:`_SHOWN`."""
    return "{" + listing(([0] if zero else []) + [int(v) for v in labels], _SHOWN) + "}"


def decide(files: Sequence[tuple[Path, MaskStats]], requested: str = "auto") -> dict[str, Any]:
    """Decide how a dataset's masks are read (module docstring); returns the mode record.

    ``files``: every mask of the dataset as ``(path, stats)`` in id order. The record is
    JSON-serialisable: ``requested``, ``mode``, ``instances_kept``, ``values`` (up to 16 sorted
    distinct values including 0), ``n_values``, ``max_labels_per_image``, ``n_masks``, ``reason``
    and ``message`` (the one console line). Ambiguous masks raise ``MedfailInputError``.
    """
    check_mode(requested)
    union = np.unique(np.concatenate([s.labels for _, s in files])) if files else \
        np.zeros(0, np.int64)
    per_image = max((len(s.labels) for _, s in files), default=0)
    vals = _values(union)
    if requested != "auto":
        mode = requested
        reason = f"--mask-mode {requested}"
        effect = {"binary": "foreground = any non-zero value",
                  "classes": "class k = label k",
                  "instances": "foreground = any non-zero value, one object per label"}[mode]
        what = f"labels per image up to {per_image}" if mode == "instances" else f"values {vals}"
        message = f"masks: --mask-mode {mode} ({what}) -> {effect}"
    else:
        mode, reason, message = _auto(files, union, per_image, vals)
    return {
        "requested": requested, "mode": mode, "instances_kept": mode == "instances",
        "values": [0, *(int(v) for v in union[:15])], "n_values": len(union) + 1,
        "max_labels_per_image": int(per_image), "n_masks": len(files), "reason": reason,
        "message": message,
    }


def _auto(files: Sequence[tuple[Path, MaskStats]], union: np.ndarray, per_image: int,
          vals: str) -> tuple[str, str, str]:
    """``(mode, reason, message)`` of the auto rule; raises on ambiguous masks."""
    if not len(union):
        return "binary", "every mask is empty", f"masks: all empty (values {vals}) -> binary, " \
            "no foreground"
    single = all(len(s.labels) <= 1 for _, s in files)
    if single and set(union.tolist()) <= set(BINARY_VALUES):
        if len(union) == 1:
            v = int(union[0])
            kind = {1: "0/1", 255: "0/255", 65535: "0/65535"}[v]
            read = "" if v == 1 else " (read as label 1)"
            return "binary", f"{kind} binary", f"masks: {kind} binary (values {vals}) -> " \
                f"foreground = {v}{read}"
        return ("binary", "binary, one foreground value per mask",
                f"masks: binary with one foreground value per mask (values {vals}) -> "
                "foreground = any non-zero value (read as label 1)")
    many = [(p, s) for p, s in files if len(s.labels) > INSTANCE_MIN_LABELS]
    if many:
        for path, s in many:
            if s.fragmented > MAX_FRAGMENTED * len(s.labels):
                raise MedfailInputError(
                    path, f"mask has {len(s.labels)} distinct labels and {s.fragmented} of them "
                    "are in several pieces: neither instance ids (one connected object per label)"
                    " nor a small class set; pass --mask-mode instances (one object per label),"
                    " --mask-mode classes (labels are class indices) or --mask-mode binary "
                    "(foreground = any non-zero value)")
        n_frag = sum(s.fragmented for _, s in many)
        pieces = "each one connected object" if n_frag == 0 else \
            f"{n_frag} label(s) in several pieces"
        return ("instances",
                f"more than {INSTANCE_MIN_LABELS} labels per image, {pieces}",
                f"masks: instance maps (up to {per_image} labels per image, {pieces}) -> "
                "foreground = any non-zero label, one object per instance (pass --mask-mode "
                "classes if the labels are classes)")
    checked = [s for _, s in files if len(s.labels) >= FRAGMENT_CHECK_LABELS]
    if len(union) > INSTANCE_MIN_LABELS and checked and all(
            s.fragmented <= MAX_FRAGMENTED * len(s.labels) for s in checked):
        return ("instances",
                f"{len(union)} distinct labels across the masks, each one connected object",
                f"masks: instance maps ({len(union)} distinct labels across the masks, up to "
                f"{per_image} per image, each one connected object) -> foreground = any "
                "non-zero label, one object per instance (pass --mask-mode classes if the "
                "labels are classes)")
    if len(union) == 1:
        v = int(union[0])
        path = next(p for p, s in files if len(s.labels))
        raise MedfailInputError(
            path, f"every mask holds only 0 and {v}: binary with foreground {v}, or class {v} "
            f"only? Pass --mask-mode binary (foreground = {v}, read as label 1) or --mask-mode "
            f"classes (label {v} = the model's class {v})")
    if int(union[-1]) >= 255:
        path, s = next((p, s) for p, s in files if len(s.labels) and int(s.labels[-1]) >= 255)
        raise MedfailInputError(
            path, f"mask values {_values(s.labels)} (all masks: {vals}): a value >= 255 next to "
            "other labels is not a class index of a small class set (an 'ignore' value, or "
            "object ids?); pass --mask-mode binary (foreground = any "
            "non-zero value), --mask-mode instances (one object per label) or --mask-mode "
            "classes (every value is a class index)")
    return "classes", "labels are class indices", \
        f"masks: semantic classes (values {vals}) -> class k = label k"


def check_model_labels(files: Sequence[tuple[Path, MaskStats]], info: dict[str, Any],
                       target_names: Sequence[str]) -> None:
    """Refuse masks whose (interpreted) labels the model does not know, naming the first file.

    The model predicts ``len(target_names)`` foreground classes as labels ``1..K``. Also refuses
    auto-detected binary/instance masks (values other than 0/1) for a model with more than one
    foreground class, where the values were probably class indices.
    """
    k = len(target_names)
    names = listing(target_names, _SHOWN)
    mode = info["mode"]
    if mode == "classes":
        for path, s in files:
            bad = s.labels[s.labels > k]
            if len(bad):
                raise MedfailInputError(
                    path, f"mask has label(s) {_values(bad, zero=False)} the model does not "
                    f"know (it predicts {k} foreground class(es) as labels 1..{k}: {names}); "
                    "if every non-zero value means foreground pass --mask-mode binary, if the "
                    "labels are object ids pass --mask-mode instances")
        return
    if k == 0:
        raise MedfailInputError(None, "the model predicts no foreground class")
    if info["requested"] == "auto" and k > 1:
        for path, s in files:
            if len(s.labels) and not (len(s.labels) == 1 and int(s.labels[0]) == 1):
                raise MedfailInputError(
                    path, f"masks were read as {mode} (values {_values(s.labels)} -> "
                    f"foreground = label 1) but the model predicts {k} foreground classes "
                    f"({names}); pass --mask-mode classes if the values are class indices")
