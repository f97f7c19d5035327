"""Fixtures shared by more than one test module (the shared non-fixture helpers are in helpers.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run_megc2019_prepare
from scripts.datatools.megc2019 import fake as fake_megc
from scripts.datatools.synthetic import generate as synthetic
from util import REPO_ROOT


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic CAS(ME)^3-like dataset (5 subjects, 40 labeled pairs, a pool of 24, 64 px),
    generated once per test session. Read-only for tests: copy it before changing anything."""
    root = tmp_path_factory.mktemp("synthetic") / "casme3"
    synthetic.generate_dataset(root, seed=0, n_subjects=5, samples_per_subject=8, pool_per_subject=4,
                               pool_only_subjects=1, image_size=64)
    return root


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-training data folder: 24 random RGB/depth pairs of three subjects, pool lists with
    intensity, the depth list reversed. Read-only for tests: copy it before changing anything."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    rgb_lines, depth_lines = [], []
    for i in range(24):
        subject = f"spNO.{1 + i % 3}"
        stem = f"{subject}-a-{i + 6}-{subject}-a-{i}_diff"
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(root / f"{stem}.png")
        Image.fromarray(rng.integers(0, 256, (72, 72), dtype=np.uint8)).save(root / f"{stem}_depth.png")
        rgb_lines.append(f"{stem}.png -1 0 {i / 24:.4f}")
        depth_lines.append(f"{stem}_depth.png -1 0")
    for view, lines in (("v_rgb", rgb_lines), ("v_depth", depth_lines[::-1])):
        (root / "data" / view).mkdir(parents=True)
        (root / "data" / view / "pretrain.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine run fastest on one intra-op thread. A module opts in
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def megc2019_releases(tmp_path_factory: pytest.TempPathFactory) -> fake_megc.FakeReleases:
    """The fake SMIC-HS, CASME II and SAMM releases, made by scripts/data/make_fake_megc2019.py. Read-only
    for tests: copy a release before changing it."""
    out = tmp_path_factory.mktemp("raw")
    done = subprocess.run([sys.executable, "scripts/data/make_fake_megc2019.py", "--out", str(out)], cwd=REPO_ROOT,
                          check=True, capture_output=True, text=True)
    assert done.stdout.split() == ["--smic", str(out / "SMIC"), "--casme2", str(out / "CASME2"),
                                   "--samm", str(out / "SAMM")]
    return fake_megc.FakeReleases(out / "SMIC", out / "CASME2", out / "SAMM")


@pytest.fixture(scope="session")
def megc2019_prepared(megc2019_releases: fake_megc.FakeReleases,
                      tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str, str]:
    """(out folder, summary, stdout, stderr) of the default MEGC2019 preparation (face crop) at 64 px.
    Read-only for tests."""
    return run_megc2019_prepare(megc2019_releases, tmp_path_factory.mktemp("prepared") / "megc2019")
