"""One source for the severities: the kernel modules' tables, collected by the catalogue.

Every other place that shows them (the severity tables of docs/stress_tests.md,
docs/domain_shift.md and docs/prompts.md, and ``medfail list``) is checked against
:data:`medfail.stress.registry.REGISTRY` here; the module docstrings no longer copy them.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medfail.cli import app
from medfail.stress import corruptions, domain_shift, prompt_perturbations, registry, spec

DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC_OF_FAMILY = {"corruption": "stress_tests.md", "domain_shift": "domain_shift.md",
                 "prompt": "prompts.md"}


def _ticked(cell: str) -> list[str]:
    """The backticked words of a table cell: "`histology`, `SM`" -> ["histology", "SM"]."""
    return cell.split("`")[1::2]


def doc_severity_rows(text: str) -> list[dict[str, object]]:
    """Severity rows of the markdown tables in ``text``: one dict per (test, parameter) row with
    ``name``, ``key``, ``values`` (three floats) and ``modalities`` (None when the table has no
    such column or the row continues the test above). A row whose first cell is empty continues
    the test of the row above (a second parameter)."""
    rows: list[dict[str, object]] = []
    header: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header, current = [], None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not header:
            header = [c.lower() for c in cells]
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        names = _ticked(cells[0])
        if names and names[0] in registry.REGISTRY:
            current = names[0]
        elif cells[0]:
            current = None
        if current is None:
            continue
        test = registry.get(current)
        keys = set(test.severities[0])
        for i, cell in enumerate(cells[1:], start=1):  # cell 0 is the name (`gamma`: both)
            ticked = _ticked(cell)
            if len(ticked) == 1 and ticked[0] in keys and i + 3 < len(cells):
                values = [float(v.replace("+", "").replace("−", "-")) for v in cells[i + 1:i + 4]]
                modalities = None
                if "modalities" in header and cells[0]:
                    m = cells[header.index("modalities")]
                    modalities = sorted(_ticked(m) or [m])
                rows.append({"name": current, "key": ticked[0], "values": values,
                             "modalities": modalities})
                break
    return rows


@pytest.mark.parametrize("family", sorted(DOC_OF_FAMILY))
def test_doc_severity_table_matches_the_catalogue(family: str) -> None:
    doc = DOCS / DOC_OF_FAMILY[family]
    rows = doc_severity_rows(doc.read_text(encoding="utf-8"))
    tests = [t for t in registry.REGISTRY.values() if t.family == family]
    expected = {(t.name, k) for t in tests for k in t.severities[0]}
    found = [(r["name"], r["key"]) for r in rows]
    assert sorted(found) == sorted(expected), f"{doc.name}: rows missing or doubled"
    for r in rows:
        test = registry.get(str(r["name"]))
        want = [float(p[str(r["key"])]) for p in test.severities]
        assert all(math.isclose(a, b) for a, b in zip(r["values"], want, strict=True)), (
            f"{doc.name}: {r['name']}.{r['key']} says {r['values']}, the catalogue {want}")
        if r["modalities"] is not None:
            assert r["modalities"] == sorted(test.modalities), (doc.name, r["name"])


def test_the_doc_parser_sees_a_wrong_value() -> None:
    """The check cannot pass vacuously: a changed number or a missing row is seen."""
    text = (DOCS / "domain_shift.md").read_text(encoding="utf-8")
    good = doc_severity_rows(text)
    assert len(good) == 25  # 2D: 7 tests, 4 with two parameters; 3D: 9 tests, 14 rows
    bad = doc_severity_rows(text.replace("| 0.02       | 0.05       | 0.1 ",
                                         "| 0.02       | 0.06       | 0.1 "))
    beta = next(r for r in bad if (r["name"], r["key"]) == ("stain_he", "beta"))
    assert beta["values"] == [0.02, 0.06, 0.1]
    assert registry.get("stain_he").params(2)["beta"] == 0.05


def test_medfail_list_prints_the_catalogue() -> None:
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    for test in registry.REGISTRY.values():
        line = next(x for x in lines if x.split()[:1] == [test.name])
        assert registry.severity_summary(test) in line
        assert test.family in line and test.taxonomy in line


def test_catalogue_is_the_kernel_tables_and_docstrings_hold_no_copy() -> None:
    tables = (*corruptions.CORRUPTIONS, *domain_shift.DOMAIN_SHIFTS,
              *prompt_perturbations.PROMPT_PERTURBATIONS, *registry.VOLUME_TESTS)
    assert {t.name: t for t in tables} == {n: registry.REGISTRY[n] for n in registry.names()}
    assert all(registry.REGISTRY[t.name] is t for t in tables)
    for module in (corruptions, domain_shift, prompt_perturbations):
        assert "=====" not in (module.__doc__ or ""), module.__name__  # no RST severity table


def test_prompt_tests_have_their_own_type() -> None:
    for name in prompt_perturbations.PROMPT_TESTS:
        assert isinstance(registry.get(name), spec.PromptTest)
    for t in (*corruptions.CORRUPTIONS, *domain_shift.DOMAIN_SHIFTS):
        assert isinstance(t, spec.StressTest) and not isinstance(t, spec.PromptTest)
    with pytest.raises(ValueError, match="family"):
        spec.StressTest("x", "prompt", "human_factors", ("any",), ({}, {}, {}), "d", "u",
                        lambda *a: a[0])
    with pytest.raises(ValueError, match="family"):
        spec.PromptTest("x", "corruption", "data", ("any",), ({}, {}, {}), "d", "u",
                        lambda *a: a[0])


def test_entry_points_refuse_the_other_kind_by_name() -> None:
    import numpy as np
    import torch

    from medfail.errors import MedfailInputError

    with pytest.raises(MedfailInputError, match="prompt test, not an image test"):
        registry.apply_corruption(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 1.0]]),
                                  "box_shift", 1, [np.random.default_rng(0)])
    with pytest.raises(MedfailInputError, match="prompt test, not an image test"):
        registry.corrupt(np.zeros((4, 4), np.uint8), "point_jitter", 2)
