"""Data tooling: writers of DVSCL data folders in the format `dataset.py` defines.

- `synthetic`: a synthetic CAS(ME)^3-like dataset (`scripts/make_synthetic_casme3.py`).
- `casme3`: the preparation of a licensed CAS(ME)^3 release (`scripts/prepare_casme3.py`).
- `fake_release`: a tiny fake CAS(ME)^3 release for tests and demos (`scripts/make_fake_casme3.py`).
"""
