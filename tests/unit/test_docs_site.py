"""The documentation site (docs/mkdocs.yml) builds with ``mkdocs build --strict``: a broken link, a missing anchor
or a page left out of the navigation fails the suite, not only CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mkdocs() -> str:
    beside_python = Path(sys.executable).parent / "mkdocs"
    found = str(beside_python) if beside_python.is_file() else shutil.which("mkdocs")
    if found is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]', part of surge[dev])")
    return found


def test_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [_mkdocs(), "build", "--strict", "-f", str(ROOT / "docs" / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "python-backend" / "index.html").is_file()


def test_readme_links_to_pages_that_exist() -> None:
    import re

    readme = (ROOT / "README.md").read_text()
    targets = set(re.findall(r"\]\((docs/pages/[^)#]+)", readme))
    assert targets, "the README links into docs/pages"
    missing = sorted(t for t in targets if not (ROOT / t).is_file())
    assert not missing, f"README links to pages that do not exist: {missing}"
