"""Prepare a CAS(ME)^3 release for DVSCL (README.md, "Reproducing on CAS(ME)^3"; --help for flags)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if __name__ == "__main__":
    # Imported here, not at the top: `--workers` processes are spawned and re-run this file's top
    # level, and they need only casme3_images, not the torch that util imports.
    from casme3_prep import main
    from util import run_cli

    run_cli(main)
