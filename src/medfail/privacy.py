"""Privacy helpers: what medfail writes names samples by id and files by base name only.

Reports and logs never carry DICOM patient tags (the readers keep pixels, spacing and modality
only) nor paths outside the data folder. This module scrubs the one place user-typed paths
enter a run directory: the recorded command line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def _looks_like_path(arg: str) -> bool:
    """An absolute or home path (POSIX or Windows), or an existing file or folder."""
    if arg.startswith(("/", "~")) or _WINDOWS_ABSOLUTE.match(arg):
        return True
    try:
        return Path(arg).exists()
    except (OSError, ValueError):  # name too long, NUL byte, ...
        return False


def _base_name(arg: str) -> str:
    """The last component of a path; ``/``, ``.`` and ``~`` stay, ``~user`` becomes ``~``."""
    if arg.startswith("~") and "/" not in arg:
        return "~"
    pure = PureWindowsPath(arg) if _WINDOWS_ABSOLUTE.match(arg) else PurePosixPath(arg)
    return pure.name or arg


def sanitize_arg(arg: str) -> str:
    """One argument with any path reduced to its base name (``--out=/a/b`` -> ``--out=b``)."""
    if arg.startswith("-") and "=" in arg:
        option, value = arg.split("=", 1)
        return f"{option}={sanitize_arg(value)}"
    if arg.startswith("-") or not _looks_like_path(arg):
        return arg
    return _base_name(arg)


def sanitize_command(command: Sequence[str] | None = None) -> list[str]:
    """A command line safe to store: paths become base names, options and values are kept.

    ``None`` means ``sys.argv``. ``/home/ana/scans/ct`` -> ``ct``, ``~/m.pt`` -> ``m.pt``.
    """
    return [sanitize_arg(str(a)) for a in (sys.argv if command is None else command)]
