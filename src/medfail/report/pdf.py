"""``report.pdf`` from ``report.html``: the same document, printed by WeasyPrint.

Why WeasyPrint: it renders the HTML report itself (one source, two forms) with CSS paged media
(``@page`` size, margins, page numbers, ``break-before`` for the appendix), installs from PyPI
with no browser and no downloads (it needs Pango, which Debian ships), and is deterministic.
Chromium printing needs a browser install; typst would need a second template.
"""

from __future__ import annotations

import logging
from pathlib import Path


def render_pdf(html_path: Path, pdf_path: Path) -> Path:
    """Print ``html_path`` (print CSS: A4) to ``pdf_path``."""
    from PIL import ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    from weasyprint import HTML

    # importing WeasyPrint turns on PIL's truncated-image loading for the whole process, which
    # would let a truncated input image pass validation in the same session: restore it.
    ImageFile.LOAD_TRUNCATED_IMAGES = truncated

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    HTML(filename=str(html_path), base_url=str(html_path.parent)).write_pdf(str(pdf_path))
    return pdf_path
