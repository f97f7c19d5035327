"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from scripts.datatools.synthetic import generate as synthetic


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CAS(ME)^3-like dataset (5 subjects, 40 labeled pairs, a pool of 24, 64 px),
    generated once per test session. Read-only for tests: copy it before changing anything."""
    root = tmp_path_factory.mktemp("synthetic") / "casme3"
    synthetic.generate_dataset(root, seed=0, n_subjects=5, samples_per_subject=8, pool_per_subject=4,
                               pool_only_subjects=1, image_size=64)
    return root
