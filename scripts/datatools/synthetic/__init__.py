"""Synthetic CAS(ME)^3-like data: `face` (subjects), `render` (frames and pairs), `generate` (the dataset)."""
