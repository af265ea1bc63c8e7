"""The budget's probe: a burst of another tenant's load costs one slice of a reading."""

import time

import pytest

from cifarlab import probe
from cifarlab.config import RunConfig


def tiny(filters: int) -> RunConfig:
    return RunConfig(model="simple", blocks=1, filters=[filters], dense=[8], batch_size=8,
                     device="cpu")


def test_a_burst_as_long_as_two_slices_leaves_every_networks_reading_alone(monkeypatch):
    # Each step sleeps 10 ms, 30 ms during a burst over the probe's first two slices. Slices
    # taken in turn put one slice of each network in the burst, and the median drops it;
    # three slices of one network in a row would have had two of its three in it.
    seconds = 0.3  # a network: 3 slices of 0.1 s
    start = None
    order = []

    def step(bench):
        nonlocal start
        start = start or time.perf_counter()
        burst = time.perf_counter() - start < 2 * seconds / probe.ROUNDS
        time.sleep(0.03 if burst else 0.01)
        if not order or order[-1] is not bench:
            order.append(bench)
    monkeypatch.setattr(probe._Bench, "step", step)
    monkeypatch.setattr(probe, "WARM_UP", 0)
    a, b = tiny(4), tiny(6)
    speeds = probe.measure_all([a, b, a], jobs=1, seconds=seconds)
    assert len(speeds) == 2  # one reading a network
    assert len(order) == 2 * probe.ROUNDS and order[0] is order[2] is not order[1]
    for speed in speeds.values():
        assert speed.step_s == pytest.approx(0.01, rel=0.3)
        assert speed.eval_image_s > 0
