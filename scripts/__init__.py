"""Command-line tools beside the entry scripts; `scripts.datatools` holds the data tooling they run."""
