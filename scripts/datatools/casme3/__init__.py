"""CAS(ME)^3 preparation (`scripts/prepare_casme3.py`), one concern a module:

- `settings`: the settings built from the flags, and the inputs their files name;
- `annotations`: annotation sheets, rows, crop boxes, the emotion -> class map;
- `frames`: a release part's folders and frames, OpenFace AU tables;
- `images`: crops, measures and the difference images of one pair (what workers run);
- `pairs`: the per-pair cache and the worker processes;
- `labeled`, `pool`: the labeled MEs; the unlabeled pool and its intensity threshold;
- `report`: the report of what was skipped or unusual;
- `prepare`: the driver, the LOSO lists and the report files.
"""
