"""k-fold linear probing of a frozen DVSCL encoder (see README.md and `python LinearProbing_CVSCL_10fold.py --help`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_probe import main  # noqa: E402
from util import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
