"""Data tooling: writers of DVSCL data folders in the format `dataset.py` defines (its write side
is `common.format`). Every tool claims the folder it writes through its run record
(`util.claim_folder`).

- `common`: what the CAS(ME)^3 and MEGC2019 preparations share (sheets, frames, crop, worker
  processes, report, the format's write side).
- `casme3`: the preparation of a licensed CAS(ME)^3 release (`scripts/data/prepare_casme3.py`).
- `megc2019`: the preparation of the MEGC2019 composite (`scripts/data/prepare_megc2019.py`).
- `synthetic`: a synthetic CAS(ME)^3-like dataset (`scripts/data/make_synthetic_casme3.py`).
- `fake_release`: a tiny fake CAS(ME)^3 release for tests and demos (`scripts/data/make_fake_casme3.py`).
- `registration`: motion compensation of a pair's frames (`--motion_compensation`).
"""
