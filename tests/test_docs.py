"""The documentation site builds with ``mkdocs build --strict``: a broken link,
anchor, page left out of the navigation or API reference fails the tests.

Skipped only where mkdocs is not installed; the dev extra (``make test``)
installs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        # Material's notice about its successor is not a warning of ours.
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    # The reference is generated from the docstrings, not left empty.
    assert 'id="oada_jobs.Service"' in api
    assert 'id="oada_jobs.testing.embedded_server"' in api


def python_blocks(page: Path) -> list[str]:
    """The ```python code blocks of a Markdown page, in order."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M)


def test_first_work_function_example_runs_as_pasted(tmp_path: Path) -> None:
    # Pasted into a file of its own, the page's first example must import and
    # define its service without anything the reader has to add.
    (first, *_) = python_blocks(REPO / "docs" / "work-functions.md")
    module = tmp_path / "pasted.py"
    module.write_text(first, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(module)],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("OADA_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_every_command_has_a_section_in_the_cli_page() -> None:
    typer_main = pytest.importorskip("typer.main")
    from oada_jobs.cli import app

    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for name in typer_main.get_group(app).commands:
        assert re.search(rf"^## `oada-jobs {name}\b", text, re.M), f"docs/cli.md lacks {name}"
