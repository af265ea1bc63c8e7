#!/usr/bin/env bash
# A separate environment with Keras on TensorFlow-CPU (the original study's framework), for
# the side-by-side columns of benchmarks/throughput.py. It never touches cifarlab's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-keras
.venv-keras/bin/pip install --quiet --upgrade pip
.venv-keras/bin/pip install --quiet "tensorflow-cpu>=2.16" numpy
.venv-keras/bin/python -c "import tensorflow as tf; print('Keras environment ready:', tf.__version__)"
