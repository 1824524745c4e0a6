"""Regenerate the committed gRPC stubs from the vendored protos: `python -m refund_mcp.processors.ucs.regenerate`.

`--check` regenerates into a temporary directory and exits 1 when the committed modules differ, so a
test can prove that what is committed is exactly what these protos and this grpcio-tools produce.
protoc writes `import payment_pb2` (the protos import each other by bare file name); the imports are
rewritten to package-relative ones so the stubs live inside refund_mcp without touching sys.path.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "proto"
GENERATED_DIR = HERE / "generated"
# health_check.proto is not used by the client; the readiness of a server is checked by a real call.
PROTOS = ("payment.proto", "payment_methods.proto", "payouts.proto", "surcharge.proto", "services.proto")
_BARE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(target: Path) -> list[Path]:
    """Write the stubs into `target`; returns the files written."""
    from grpc_tools import protoc  # a test/development dependency, never needed at runtime

    target.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={target}", f"--grpc_python_out={target}"]
    if protoc.main([*args, *(str(PROTO_DIR / name) for name in PROTOS)]) != 0:
        raise RuntimeError("protoc failed on the vendored protos")
    written = []
    for path in sorted(target.glob("*_pb2*.py")):
        text = _BARE_IMPORT.sub(r"from . import \1 as \2", path.read_text())
        path.write_text(text)
        written.append(path)
    init = target / "__init__.py"
    init.write_text('"""Generated from ../proto by regenerate.py; do not edit."""\n')
    written.append(init)
    return written


def differences(committed: Path = GENERATED_DIR) -> list[str]:
    """Names of the generated files that differ from (or are missing in) `committed`."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
        return [
            path.name
            for path in fresh
            if not (committed / path.name).is_file() or (committed / path.name).read_bytes() != path.read_bytes()
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are not current")
    args = parser.parse_args(argv)
    if args.check:
        stale = differences()
        if stale:
            print("stale generated stubs: " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    for path in generate(GENERATED_DIR):
        print(path.relative_to(HERE))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
