"""Synthetic CAS(ME)^3-like data: `face` (subjects), `render` (frames and pairs), `generate` (the dataset),
`raw_release` (the dataset as a raw release for scripts/data/prepare_casme3.py)."""
