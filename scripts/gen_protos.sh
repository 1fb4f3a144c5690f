#!/usr/bin/env bash
# Regenerates the Python stubs of every proto into sdk/python/src/ownchat.
# Usage: scripts/gen_protos.sh [PYTHON]   (make protos runs it with .venv's python)
# The proto tree mirrors the package (protos/ownchat/data/v1 -> ownchat.data.v1),
# so generated imports need no rewriting.
set -euo pipefail
python_cmd=$(command -v "${1:-python}")
# Absolute, but not resolved: a virtual environment's python is a symlink.
python="$(cd "$(dirname "$python_cmd")" && pwd)/$(basename "$python_cmd")"
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/sdk/python/src"
cd "$root/protos"
mapfile -t protos < <(find ownchat -name '*.proto' | sort)
# Remove what an earlier run generated, so deleted protos leave nothing behind.
find "$out/ownchat" -path '*/v[0-9]*/*' \( -name '*_pb2*.py' -o -name '*_pb2*.pyi' \) -delete
"$python" -m grpc_tools.protoc -I . \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$python")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$python")/protoc-gen-mypy_grpc" \
  "${protos[@]}"
for proto in "${protos[@]}"; do
  dir=$(dirname "$proto")
  while [ "$dir" != "." ] && [ "$dir" != "ownchat" ]; do
    touch "$out/$dir/__init__.py"
    dir=$(dirname "$dir")
  done
done
