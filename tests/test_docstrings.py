"""Every registered algorithm's module docstring ends with its deviations table, naming the official code.

The table is a reST grid table with the columns "What differs from the official code", "Why" and "Expected effect",
under the heading ``Deviations from the official code (``owner/repo`` at ``commit``):``.
"""

from __future__ import annotations

import importlib
import re

import pytest

from dime.agents import ALGORITHMS

#: The code each module is compared with (the audit's table, ``baselines-audit.md``).
OFFICIAL = {
    "sac": ("vwxyzjn/cleanrl", "fe8d8a0"),
    "dime": ("ALRhub/DIME", "7082bb7"),
    "dime-gauss": ("ALRhub/DIME", "7082bb7"),
    "crossq": ("adityab/CrossQ", "a318a26"),
    "bro": ("naumix/BiggerRegularizedOptimistic", "5870a13"),
    "bro-fast": ("naumix/BiggerRegularizedOptimistic", "5870a13"),
    "qsm": ("Alescontrela/score_matching_rl", "2e77893"),
    "diffusion-ql": ("quantumiracle/Consistency_Model_For_Reinforcement_Learning", "cdeae87"),
    "consistency-ac": ("quantumiracle/Consistency_Model_For_Reinforcement_Learning", "cdeae87"),
    "dipo": ("BellmanTimeHut/DIPO", "c6d8d1b"),
    "qvpo": ("wadx2019/qvpo", "40a1974"),
    "dacer": ("happy-yan/DACER-Diffusion-with-Online-RL", "848c1f2"),
}
HEADING = re.compile(r"^Deviations from the official code \(``([\w.-]+/[\w.-]+)`` at ``([0-9a-f]{7,40})``\):$", re.M)
COLUMNS = ["What differs from the official code", "Why", "Expected effect"]


def test_every_registered_algorithm_names_its_official_code():
    assert set(OFFICIAL) == set(ALGORITHMS)


def table_rows(table: str) -> list[list[str]]:
    """Rows of a grid table as lists of cell texts (continuation lines joined)."""
    lines = table.strip().splitlines()
    assert lines[0].startswith("+-") and lines[-1].startswith("+-"), "the table must be framed by border lines"
    rows, current = [], None
    for line in lines:
        if line.startswith("+"):
            assert set(line) <= {"+", "-", "="}, line
            if current is not None:
                rows.append([" ".join(cell.split()) for cell in current])
            current = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert line.startswith("| ") and line.endswith(" |") and len(cells) == 3, f"not a 3-column row: {line!r}"
        current = cells if current is None else [f"{a} {b}" for a, b in zip(current, cells, strict=True)]
    return rows


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_docstring_ends_with_a_complete_deviations_table(algo):
    module = importlib.import_module(ALGORITHMS[algo].partition(":")[0])
    doc = module.__doc__ or ""
    headings = HEADING.findall(doc)
    assert headings == [OFFICIAL[algo]], f"{module.__name__}: heading naming {OFFICIAL[algo]} expected once"
    table = doc[HEADING.search(doc).end() :]
    rows = table_rows(table)  # also checks that nothing but the table follows the heading
    assert rows[0] == COLUMNS
    assert len(rows) >= 2, "at least one deviation"
    for row in rows[1:]:
        assert all(row), f"{module.__name__}: every deviation says what, why and its expected effect: {row}"
