#!/usr/bin/env bash
# Create .venv (once) and install cifarlab into it: what the main job needs, and with --test
# also the test suite's tools (ONNX, TensorBoard, MLflow, Ray, Jupyter's kernel, Chromium).
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case "${1:-}" in
    "") extras="" ;;
    --test) extras="[test]" ;;
    *) echo "setup.sh: unknown option '$1'; use no option (the main job) or --test" >&2
       exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# constraints.txt pins the versions this project is tested with (torch 2.13.0 among them);
# the package itself asks only for lower bounds, so other installs keep their own torch.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt \
    -e ".${extras}"

# The report test renders report.html in headless Chromium (Debian's package).
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing Debian's chromium for the report test..."
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "warning: chromium is missing and cannot be installed here (needs root and" \
             "apt-get); the headless-browser report test will fail" >&2
    fi
fi
