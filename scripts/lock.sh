#!/usr/bin/env bash
# Regenerate the lock files from setup.cfg's version ranges and the torch pin of the
# Dockerfile (ARG TORCH_VERSION), for Python 3.11 on Linux x86_64 with the CPU torch wheel:
#   requirements.lock       exact versions of every runtime dependency (the image, Apptainer)
#   requirements-test.lock  the same pins plus the test extras (.ci/run)
# setup.cfg keeps ranges for pip users. Pins already in the lock files are kept (uv prefers
# them); UPGRADE=1 resolves everything anew. Torch is locked as `torch==X` without the
# local label: the image installs the variant first (+cpu or +cu126) and the lock accepts it.
#   scripts/lock.sh                                  # torch from the PyTorch CPU index
#   TORCH_FIND_LINKS=/opt/wheels scripts/lock.sh     # ... or from a local folder of wheels
# Needs uv (pip install uv).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
TORCH_VERSION=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
[ -n "$TORCH_VERSION" ] || { echo "no ARG TORCH_VERSION in Dockerfile" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "torch==${TORCH_VERSION}+cpu" > "$tmp/torch.in"
if [ -n "${TORCH_FIND_LINKS:-}" ]; then
    src=(--find-links "$TORCH_FIND_LINKS")
else
    src=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi
common=(--python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet
    --custom-compile-command "scripts/lock.sh" "${src[@]}")
[ "${UPGRADE:-0}" = 1 ] && common+=(--upgrade)
"$UV" pip compile setup.cfg "$tmp/torch.in" "${common[@]}" -o requirements.lock
"$UV" pip compile setup.cfg "$tmp/torch.in" --extra test -c requirements.lock "${common[@]}" \
    -o requirements-test.lock
for f in requirements.lock requirements-test.lock; do
    sed -i -e "s/^torch==${TORCH_VERSION}+cpu\$/torch==${TORCH_VERSION}/" \
        -e "s|-r [^ ]*/torch.in|the torch pin (Dockerfile ARG TORCH_VERSION)|" "$f"
done
sha256sum requirements.lock
