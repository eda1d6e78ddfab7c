"""Run imagecorruptions 1.1.2 (2019) on today's numpy / scikit-image / setuptools.

Patches are applied in this process only (nothing on disk changes), and each is recorded so
``latest.json`` says what was changed and why.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from importlib import resources
from typing import Any

#: corruptions of imagecorruptions that still fail after the patches, with the reason
BROKEN = {
    "fog": "plasma_fractal uses np.float_, removed in numpy 2.0 (fog is not shared with medfail, "
           "so it is left unpatched)",
}


def _resource_filename(package: str, name: str) -> str:
    """``pkg_resources.resource_filename`` for a module's data file."""
    pkg = package if package in sys.modules and hasattr(sys.modules[package], "__path__") \
        else package.rpartition(".")[0]
    return str(resources.files(pkg) / name)


def load_imagecorruptions() -> tuple[Any, list[dict[str, str]]]:
    """Import ``imagecorruptions`` with the patches it needs; returns (module, patch records)."""
    patches: list[dict[str, str]] = []
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
        patches.append({
            "what": "pkg_resources (imported at module level)",
            "why": "setuptools no longer ships pkg_resources (and none is installed in .venv); "
                   "a stub providing resource_filename via importlib.resources is injected "
                   "(only frost uses it)"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy.ndimage.interpolation is deprecated
        icc = importlib.import_module("imagecorruptions.corruptions")
        ic = importlib.import_module("imagecorruptions")

    from skimage.filters import gaussian as sk_gaussian

    def gaussian(image: Any, sigma: Any = 1.0, multichannel: bool | None = None,
                 **kwargs: Any) -> Any:
        if multichannel:
            kwargs["channel_axis"] = -1
        return sk_gaussian(image, sigma=sigma, **kwargs)

    icc.gaussian = gaussian
    patches.append({
        "what": "imagecorruptions.corruptions.gaussian",
        "why": "skimage.filters.gaussian no longer accepts multichannel= (removed in "
               "scikit-image 0.21); wrapped to pass channel_axis=-1 instead (affects "
               "gaussian_blur, glass_blur, elastic_transform, spatter)"})
    return ic, patches
