"""Build tiny fake SMIC-HS, CASME II and SAMM releases for tests and demos (docs/megc2019.md)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.datatools.megc2019.fake import build_fake_releases  # noqa: E402
from util import ArgumentParser, run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Build the releases under --out and print where their parts are."""
    parser = ArgumentParser(description="Write tiny fake SMIC-HS, CASME II and SAMM releases (not real data).")
    parser.add_argument("--out", required=True, help="folder to create the fake releases in")
    parser.add_argument("--overwrite", action="store_true", help="replace fake releases already in --out")
    args = parser.parse_args(argv)
    releases = build_fake_releases(args.out, args.overwrite)
    print(f"--smic {releases.smic}\n--casme2 {releases.casme2}\n--samm {releases.samm}")


if __name__ == "__main__":
    run_cli(main)
