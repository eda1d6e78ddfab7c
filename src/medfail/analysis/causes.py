"""Which failure cause a stress test probes, and where it sits in the taxonomy.

A *cause* groups tests that break a model for the same reason (all noise models are one cause);
case studies are deduplicated by cause, and the taxonomy lists each cause's tests as its probes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cause:
    name: str
    bucket: str  # data | model | evaluation | human factors
    entry: str  # the taxonomy entry it is evidence for
    why: str  # one sentence for a case study's diagnosis


CAUSES: dict[str, Cause] = {
    "intensity": Cause("intensity", "data", "acquisition / contrast",
                       "the intensity mapping moved lesion-to-background contrast outside the "
                       "range the model was trained on"),
    "resolution": Cause("resolution", "data", "acquisition / contrast",
                        "lower acquisition resolution removed the fine structure the model uses"),
    "site": Cause("site", "data", "acquisition / contrast",
                  "another scanner or site changes intensities and texture jointly"),
    "noise": Cause("noise", "data", "artifacts",
                   "acquisition noise hides low-contrast structure and creates false edges"),
    "blur": Cause("blur", "data", "artifacts",
                  "blur or motion spreads lesion boundaries and merges small objects "
                  "into background"),
    "compression": Cause("compression", "data", "artifacts",
                         "compression blocks replace texture with flat patches"),
    "mri_artifact": Cause("mri_artifact", "data", "artifacts",
                          "an MR acquisition artifact adds structure that is not anatomy"),
    "stain": Cause("stain", "data", "acquisition / contrast",
                   "a different stain protocol shifts colours the model relies on"),
    "prompt": Cause("prompt", "human factors", "prompt misplacement",
                    "the prompt a user would give was misplaced or mis-sized"),
    "slice": Cause("slice", "data", "rare morphologies",
                   "the case belongs to a subgroup the model handles worse on clean images"),
}

TEST_CAUSE: dict[str, str] = {
    "brightness": "intensity", "contrast": "intensity", "gamma": "intensity",
    "ct_window": "intensity", "resolution_shift": "resolution", "shift_data": "site",
    "gaussian_noise": "noise", "poisson_noise": "noise", "speckle": "noise",
    "gaussian_blur": "blur", "defocus": "blur", "motion_blur": "blur", "pixelate": "blur",
    "jpeg": "compression", "stain_he": "stain",
    "mri_bias_field": "mri_artifact", "mri_ghosting": "mri_artifact", "mri_motion": "mri_artifact",
    "mri_spike": "mri_artifact",
}


def cause_of(test: str, family: str = "") -> Cause:
    """The cause a test probes (prompt tests share one; unknown tests: their own name)."""
    if family == "prompt":
        return CAUSES["prompt"]
    key = TEST_CAUSE.get(test)
    if key is None:
        return Cause(test, "data", "artifacts", f"the {test} stress test")
    return CAUSES[key]
