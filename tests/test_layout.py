"""The house rules a newcomer relies on, checked: files of at most 400 lines, a short top level in amole/, one
name per concept, a core that imports no Flower, server algorithms that import no model code."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sources() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.py"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    return [ROOT / p for p in listed if (ROOT / p).is_file()]


def test_layout_no_file_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _sources() if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_layout_amole_top_level_is_short_and_names_are_unique() -> None:
    top = [p.name for p in (ROOT / "amole").iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()]
    assert len(top) <= 12, sorted(top)
    names = Counter(p.name for p in _sources()
                    if p.parts[len(ROOT.parts)] != "tests" and p.name not in ("__init__.py", "app.py"))
    assert not [n for n, c in names.items() if c > 1]


def test_layout_the_core_imports_no_flower_and_server_algorithms_no_model_code() -> None:
    for path in (ROOT / "amole").rglob("*.py"):
        text = path.read_text()
        assert "import flwr" not in text and "from flwr" not in text, path
    code = ("import sys\n"
            "import amole.server.assign, amole.server.planner, amole.server.aggregate\n"
            "import amole.server.routing_codes, amole.server.privacy, amole.strategies.registry\n"
            "assert 'transformers' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_layout_every_test_docs_reliability_names_exists() -> None:
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 20
    for row in rows:
        file = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            file = path or file
            assert file and f"def {name}(" in (ROOT / file).read_text(), (file, name)
