"""Coverage-guided fuzzing (atheris) of the CIFAR binary and pickle parsers. Run by hand:

    .venv/bin/pip install atheris
    .venv/bin/python benchmarks/fuzz_parsers.py -max_total_time=600 -rss_limit_mb=4096

Inputs start from a seed corpus of valid batches (written to a temporary folder), so
mutations reach the label, dtype and shape checks rather than dying on the first byte. Any
exception other than cifarlab's own one-line CifarlabError is a crash: libFuzzer stops,
prints it and writes the input that caused it (crash-*) for a regression test.
"""

import pickle
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np
import torch  # noqa: F401  (imported first so that only cifarlab's own code is instrumented)

with atheris.instrument_imports(include=["cifarlab"]):
    from cifarlab import data
    from cifarlab.errors import CifarlabError


def one_input(blob: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(blob)
    mode = fdp.ConsumeIntInRange(0, 2)
    try:
        if mode == 0:  # whole records most of the time, with a few stray bytes sometimes
            records = fdp.ConsumeIntInRange(0, 3)
            stray = fdp.ConsumeIntInRange(0, 2) if fdp.ConsumeBool() else 0
            body = fdp.ConsumeBytes(records * data.RECORD_BYTES + stray)
            data._parse_binary(body.ljust(records * data.RECORD_BYTES + stray, b"\0"), "f.bin")
        elif mode == 1:
            data._parse_python_batch(fdp.ConsumeBytes(fdp.remaining_bytes()), "fuzz_batch")
        else:
            data._parse_meta(fdp.ConsumeBytes(fdp.remaining_bytes()), "batches.meta")
    except CifarlabError as e:
        if "\n" in str(e):
            raise AssertionError(f"multi-line message: {e!r}") from None


def seed_corpus() -> str:
    folder = Path(tempfile.mkdtemp(prefix="cifar-fuzz-corpus-"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    batch = {b"batch_label": b"x", b"labels": [3, 9], b"data": x, b"filenames": [b"a", b"b"]}
    for proto in (2, 4):
        (folder / f"batch{proto}").write_bytes(b"\x01" + pickle.dumps(batch, protocol=proto))
    meta = {b"label_names": [b"c%d" % i for i in range(10)]}
    (folder / "meta").write_bytes(b"\x02" + pickle.dumps(meta, protocol=2))
    (folder / "records").write_bytes(b"\x00\x02\x00" + bytes(rng.integers(0, 256, 3073 * 2,
                                                                         dtype=np.uint8)))
    return str(folder)


if __name__ == "__main__":
    atheris.Setup(sys.argv + [seed_corpus()], one_input)
    atheris.Fuzz()
