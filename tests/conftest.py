"""Shared test fixtures. Expensive artefacts (trained/QAT/exported models) are built once per session."""

from __future__ import annotations

import os
import pathlib

import pytest

from keras_models import backend  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MOBILENET_SHARED_DIR", REPO.parent / "shared")).resolve()


def shared_path(*parts: str) -> pathlib.Path:
    """A path under ../shared, or skip the calling test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared data folder beside the repository), which is absent")
    return path


@pytest.fixture(scope="session")
def shared():
    return shared_path
