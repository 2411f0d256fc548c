"""Regenerate the Python code for protos/*.proto, or check that it is up to date.

    python -m protos.generate          # rewrite protos/*_pb2*.py
    python -m protos.generate --check  # exit 1 if regenerating would change anything
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = sorted(p.relative_to(ROOT) for p in (ROOT / "protos").glob("*.proto"))


def generate(out_dir: Path) -> None:
    for proto in PROTO_FILES:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(ROOT / proto),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args()
    if not args.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [
            str(f.relative_to(tmp))
            for f in Path(tmp, "protos").iterdir()
            if not filecmp.cmp(f, ROOT / "protos" / f.name, shallow=False)
        ]
    if stale:
        print(f"generated code is stale: {', '.join(stale)}; run python -m protos.generate")
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
