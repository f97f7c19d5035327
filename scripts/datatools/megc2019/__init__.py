"""MEGC2019 composite (CD) preparation (`scripts/data/prepare_megc2019.py`), one concern a module (what
it shares with the CAS(ME)^3 preparation is in `scripts.datatools.common`):

- `databases`: the three releases (SMIC-HS folders, CASME II and SAMM sheets and frames) read
  into clips with the MEGC2019 3-class mapping and composite subject names;
- `images`: the face crop, the apex estimate (SMIC, bad sheet apexes) and one clip's RGB
  difference image (what workers run);
- `prepare`: the driver, the LOSO lists, the samples table and the counts (against the
  standard composite's);
- `fake`: tiny fake releases of the three databases for tests (`scripts/data/make_fake_megc2019.py`).
"""
