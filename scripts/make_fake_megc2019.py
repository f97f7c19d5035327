"""Build tiny fake SMIC-HS, CASME II and SAMM releases for tests and demos (docs/megc2019.md)."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.datatools.megc2019.fake import build_fake_releases  # noqa: E402


def main() -> None:
    """Build the releases under --out and print where their parts are."""
    parser = argparse.ArgumentParser(description="Write tiny fake SMIC-HS, CASME II and SAMM releases (not real data).")
    parser.add_argument("--out", required=True, help="folder to create the fake releases in")
    releases = build_fake_releases(parser.parse_args().out)
    print(f"--smic {releases.smic}\n--casme2 {releases.casme2}\n--samm {releases.samm}")


if __name__ == "__main__":
    main()
