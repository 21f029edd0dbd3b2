"""The skip guard fails a real pytest run on a skip not on the allowlist, and only then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.skip_guard import ALLOWLIST, read_allowlist

PROJECT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_scratch.py").write_text("import pytest\n\n" + body)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.skip_guard", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), "-rs",
         str(tmp_path / "test_scratch.py")],
        cwd=PROJECT, capture_output=True, text=True, timeout=120, check=False)


def test_an_unlisted_skip_fails_the_run_and_is_named(tmp_path: Path) -> None:
    done = _run(tmp_path, "def test_ok():\n    assert True\n\n"
                          "def test_hidden():\n    pytest.skip('dockerd did not start')\n")
    assert done.returncode == 1, done.stdout
    assert "UNEXPECTED SKIP test_scratch.py::test_hidden: dockerd did not start" in done.stdout


def test_a_module_level_importorskip_fails_the_run(tmp_path: Path) -> None:
    done = _run(tmp_path, "pytest.importorskip('no_such_module_here')\n\ndef test_x():\n    pass\n")
    assert done.returncode == 1, done.stdout
    assert "UNEXPECTED SKIP test_scratch.py" in done.stdout and "no_such_module_here" in done.stdout


def test_an_allowlisted_skip_passes(tmp_path: Path) -> None:
    done = _run(tmp_path, "def test_ok():\n    assert True\n\n"
                          "def test_gpu():\n    pytest.skip('needs a GPU (no CUDA device)')\n")
    assert done.returncode == 0, done.stdout
    assert "1 skipped, 0 unexpected" in done.stdout


def test_a_failing_run_keeps_its_own_status(tmp_path: Path) -> None:
    done = _run(tmp_path, "def test_bad():\n    assert 1 == 2\n\n"
                          "def test_hidden():\n    pytest.skip('whatever')\n")
    assert done.returncode == 1 and "UNEXPECTED SKIP" in done.stdout


def test_the_allowlist_is_short_and_every_entry_says_why() -> None:
    allowed = read_allowlist()
    assert "root can read anything" in allowed and len(allowed) <= 5
    entries = [ln for ln in ALLOWLIST.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert all(" # " in ln and ln.split(" # ", 1)[1].strip() for ln in entries), entries
