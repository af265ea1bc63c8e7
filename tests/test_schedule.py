"""A study trains its runs so that its questions close as early as possible."""

from pathlib import Path

import pytest
from torch import nn

from cifarlab import models, rundir, runner, schedule
from cifarlab import study as studies
from cifarlab.study import Scale


def seed_study_tasks(tmp_path: Path):
    study = studies.prepare("seed", {"data": str(tmp_path / "data")}, Scale(seeds=2))
    return study, runner.plan(study, tmp_path / "study")


def variants_in_order(tasks) -> list[str]:
    return list(dict.fromkeys(t.variant for t in tasks))


def test_the_seed_study_trains_its_cheapest_questions_first(tmp_path):
    study, tasks = seed_study_tasks(tmp_path)
    order = schedule.answers_first(tasks, study.questions, study.twins())
    assert sorted(t.key for t in order) == sorted(t.key for t in tasks)  # nothing lost
    # Batch norm costs 0.31 of the simple network per image, and part 5's three questions
    # need it and a tenth or half of the images: they close first; then the deeper network
    # (half the simple one's work per run: batch norm against it), the simple one, the two
    # early stops.
    assert variants_in_order(order) == [
        "part4-batchnorm", "part5-batchnorm fraction=0.1", "part5-batchnorm fraction=0.5",
        "part2-deep", "part1-simple", "part3-es-val_accuracy", "part3-es-val_loss",
        "part5-batchnorm fraction=0.2"]  # asked by no question: last
    assert schedule.closing_order(order, study.questions, study.twins())[:4] == [
        "5 too little data costs accuracy (4 runs)", "5 less data, similar accuracy (6 runs)",
        "5 less data, less time (6 runs)",
        "4 batch norm: smaller gap than deep (8 runs)"]


def test_runs_already_begun_go_first_and_their_trained_epochs_cost_nothing(tmp_path):
    study, tasks = seed_study_tasks(tmp_path)
    begun = next(t for t in tasks if t.key == "part2-deep seed 1")
    begun.path.mkdir(parents=True)
    (begun.path / "config.json").write_text("{}")
    (begun.path / rundir.CHECKPOINT).write_bytes(b"")
    order = schedule.answers_first(tasks, study.questions, study.twins())
    assert order[0] is begun and order[1].variant == "part4-batchnorm"

    full = schedule.run_cost(begun.cfg, begun.path)
    row = dict.fromkeys(rundir.HISTORY_COLUMNS, 1.0)
    (begun.path / "history.csv").write_text(rundir.history_csv(
        [{**row, "epoch": e} for e in range(1, 41)]))
    assert schedule.run_cost(begun.cfg, begun.path) == pytest.approx(full * 10 / 50)


def test_a_study_without_questions_keeps_its_own_order(tmp_path):
    study, tasks = seed_study_tasks(tmp_path)
    assert schedule.answers_first(tasks, [], study.twins()) == tasks


def test_run_cost_counts_the_networks_multiply_adds():
    # 3x3 convolution 3 -> 4 channels on 32x32 (padding 1), then 4*32*32 -> 10
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4096, 10))
    assert models.multiply_adds(net) == 4 * 32 * 32 * 27 + 4096 * 10
    ratio = (models.multiply_adds(models.build(models.preset("batchnorm")))
             / models.multiply_adds(models.build(models.preset("simple"))))
    assert 0.25 < ratio < 0.4
