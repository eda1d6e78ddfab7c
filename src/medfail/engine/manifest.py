"""Which files of a run directory medfail wrote: moved to :mod:`medfail.rundir` (issue 12).

Kept as a re-export so existing imports keep working; new code imports :mod:`medfail.rundir`.
"""

from __future__ import annotations

from medfail.rundir import (  # noqa: F401
    CONDITION_SUFFIXES,
    FORMAT,
    HOME,
    MANIFEST,
    Manifest,
    ReportOutputs,
    Snapshot,
    cache_key,
    check_configuration,
    check_out_dir,
    condition_files,
    damage,
    enclosing_manifest,
    open_run_dir,
    own_folder,
    snapshot,
    write_atomic,
)
