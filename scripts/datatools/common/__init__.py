"""What the CAS(ME)^3 and MEGC2019 preparations share, one concern a module:

- `sheets`: annotation spreadsheets (.xlsx, .xls, .csv), the header row found by its columns;
- `frames`: a clip's frame files by number, and source frames decoded and verified;
- `crop`: the face box, crop boxes, cropping and resizing, the luma of a frame;
- `tasks`: the worker processes that run one function over many tasks;
- `report`: what was left out or unusual, and the report's tables and text;
- `format`: the write side of the data format of `dataset.py` (difference encoding, PNG files
  written and verified, list files and LOSO lists).
"""
