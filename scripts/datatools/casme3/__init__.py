"""CAS(ME)^3 preparation (`scripts/data/prepare_casme3.py`), one concern a module (what it shares with
the MEGC2019 preparation is in `scripts.datatools.common`):

- `settings`: the settings built from the flags, and the inputs their files name;
- `annotations`: the annotation rows, crop boxes, the emotion -> class map;
- `frames`: a release part's folders and frames, OpenFace AU tables;
- `images`: measures and the difference images of one pair (what workers run);
- `pairs`: the per-pair cache that lets a re-run resume, and the pairs' computation;
- `labeled`, `pool`: the labeled MEs; the unlabeled pool and its intensity threshold;
- `report`: the text of the report;
- `prepare`: the driver (the output folder's run record, the LOSO lists, the report files).
"""
