"""Fetch the real-CT demo (TotalSegmentator 2.18.0 sdist, pinned + sha256) into demo_data/ and write its datalist.

Usage: python scripts/data/fetch_demo.py [--dest demo_data] [--sdist path/to/totalsegmentator-2.18.0.tar.gz]
"""

from bundle.data.demos import build_demo
from bundle.errors import run_script


def main(dest: str = "demo_data", sdist: str = None, holdout_every: int = 4) -> None:
    """Fetches, verifies, remaps and splits the demo volume; prints the datalist path."""
    print(build_demo(dest, sdist, holdout_every))


if __name__ == "__main__":
    run_script(main)
