"""LOSO fine-tuning (or frozen linear evaluation) of a DVSCL encoder (see README.md and `python fine-tune_CVSCL.py --help`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune import main  # noqa: E402
from util import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
