"""Shared fixtures. Tests that need ../shared skip with the reason when it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    return Path(os.environ.get("AVE_SHARED") or REPO.parent / "shared")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared()
    if not d.is_dir():
        pytest.skip(f"shared data folder {d} is absent (set AVE_SHARED to its path)")
    return d


def _need(rel: str) -> Path:
    f = _shared() / rel
    if not f.exists():
        pytest.skip(f"{f} is absent (shared data; set AVE_SHARED)")
    return f


@pytest.fixture(scope="session")
def yamnet_tflite() -> Path:
    return _need("weights/yamnet/yamnet.tflite")


@pytest.fixture(scope="session")
def ravdess_speech() -> Path:
    return _need("data/ravdess/speech16k")


@pytest.fixture(scope="session")
def ravdess_48k() -> Path:
    return _need("data/ravdess/speech48k_originals")


@pytest.fixture(scope="session")
def cremad_dir() -> Path:
    return _need("data/cremad")


@pytest.fixture(scope="session")
def yamnet_weights(yamnet_tflite):
    from training.yamnet import load_weights
    return load_weights(yamnet_tflite)


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    return _need("data/fer2013")
