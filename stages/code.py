"""DVC stage `code`: write each stage command's code manifest, the one code dep every other stage has
(`pipeline.wiring.code`)."""
from __future__ import annotations

import argparse

from pipeline.wiring.code import write_manifests


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    write_manifests()


if __name__ == "__main__":
    main()
