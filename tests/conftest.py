"""Shared test fixtures: the project's shared data folder (reference models, real clips).

The shared folder is ``../shared`` beside the repository, or the folder named by the
``CVVAE_SHARED`` environment variable. Without it, the tests that need it are skipped (the
reason is printed at the end of the run); everything else runs on its own. Tests reach it only
through the fixtures below or :func:`shared_path`.
"""

import os
from pathlib import Path

import pytest
import torch

SHARED = Path(
    os.environ.get("CVVAE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared"
)
REFERENCE = SHARED / "reference"
VIDEOS = SHARED / "data" / "videos"
MISSING = (
    f"needs the shared data folder {SHARED} (reference models and clips), which is missing; "
    f"set CVVAE_SHARED to its location"
)


def shared_available() -> bool:
    return REFERENCE.is_dir() and VIDEOS.is_dir()


def shared_path(*parts: str) -> Path:
    """``SHARED / parts``; skips the calling test when the shared folder is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(MISSING if not shared_available() else f"missing shared file: {path}")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return shared_path("reference")


@pytest.fixture(scope="session")
def video_paths() -> list[Path]:
    return sorted(shared_path("data", "videos").glob("*.mp4"))


def pytest_terminal_summary(terminalreporter):
    """Say once, at the end, why tests were skipped when the shared folder is missing."""
    skipped = terminalreporter.stats.get("skipped", [])
    count = sum(1 for r in skipped if MISSING in str(r.longrepr))
    if count:
        terminalreporter.write_line(
            f"{count} tests skipped: the shared data folder {SHARED} is missing "
            f"(set CVVAE_SHARED to its location)"
        )
