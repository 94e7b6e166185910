"""Generate the Python code of the contract: proto/curator/v1/*.proto -> proto/python/curator_proto/v1/.

    python proto/generate.py          # (make proto) write the generated modules
    python proto/generate.py --check  # exit 1 if the checked-in modules are stale

The proto package is curator.v1, but the Python package is curator_proto.v1 so that the generated
code can never shadow the engine package `curator`; imports are rewritten to match.
"""

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "curator" / "v1"
TARGET = HERE / "python" / "curator_proto" / "v1"


def generate() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as out:
        protos = sorted(str(p.relative_to(HERE)) for p in SOURCE.glob("*.proto"))
        code = protoc.main(["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        files = {}
        for path in sorted((Path(out) / "curator" / "v1").glob("*.py")):
            text = path.read_text().replace("from curator.v1 import", "from curator_proto.v1 import")
            files[path.name] = text
        return files


def main() -> int:
    files = generate()
    files["__init__.py"] = ""
    if "--check" in sys.argv:
        stale = [name for name, text in files.items()
                 if not (TARGET / name).exists() or (TARGET / name).read_text() != text]
        if stale:
            print(f"generated code is stale: {', '.join(stale)}; run `make proto`")
            return 1
        return 0
    TARGET.mkdir(parents=True, exist_ok=True)
    (TARGET.parent / "__init__.py").write_text('"""Generated gRPC code of the Curator contract (see proto/)."""\n')
    for name, text in files.items():
        (TARGET / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
