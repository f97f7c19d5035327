"""Build the tiny fake CAS(ME)^3 release the tests use (docs/casme3-preparation.md, "Running it on the
fake release")."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.datatools.fake_release import build_fake_release  # noqa: E402
from util import ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Build the release under --out and print where its parts are."""
    parser = ArgumentParser(description="Write a tiny fake CAS(ME)^3 release (not real data).")
    parser.add_argument("--out", required=True, help="folder to create the fake release in")
    parser.add_argument("--overwrite", action="store_true", help="replace a fake release already in --out")
    args = parser.parse_args(argv)
    release = build_fake_release(args.out, args.overwrite)
    print(f"Part A root: {release.root}\nPart B root: {release.part_b}\nannotation: {release.annotation}\n"
          f"box file: {release.boxes}\nOpenFace CSVs: {release.au_dir}")


if __name__ == "__main__":
    run_cli(main)
