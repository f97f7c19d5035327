"""Build the tiny fake CAS(ME)^3 release the tests use (README.md, "Reproducing on CAS(ME)^3")."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.datatools.fake_release import build_fake_release  # noqa: E402


def main() -> None:
    """Build the release under --out and print where its parts are."""
    parser = argparse.ArgumentParser(description="Write a tiny fake CAS(ME)^3 release (not real data).")
    parser.add_argument("--out", required=True, help="folder to create the fake release in")
    release = build_fake_release(parser.parse_args().out)
    print(f"Part A root: {release.root}\nPart B root: {release.part_b}\nannotation: {release.annotation}\n"
          f"box file: {release.boxes}\nOpenFace CSVs: {release.au_dir}")


if __name__ == "__main__":
    main()
