"""Shared test fixtures: the project's shared/ folder (reference vectors, real clips)."""

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "reference"
VIDEOS = SHARED / "data" / "videos"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def video_paths() -> list[Path]:
    return sorted(VIDEOS.glob("*.mp4"))
