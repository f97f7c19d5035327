"""Pre-train DVSCL encoders on RGB/depth difference-image pairs (see README.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pretrain import main  # noqa: E402
from util import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
