"""A study trains its runs so that its questions close as early as possible."""

from pathlib import Path

import pytest
from torch import nn

from cifarlab import models, progress, rundir, runner, schedule
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
    # the last run a question waits for is said as one run, not "1 runs"
    assert "4 batch norm: smaller gap than deep (1 run)" in schedule.closing_order(
        order[:1], study.questions, study.twins())


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


def _trained(task, seconds: list[float], image_size: int = 32) -> None:
    """Write `task`'s history: one epoch per entry of `seconds`."""
    task.path.mkdir(parents=True, exist_ok=True)
    row = dict.fromkeys(rundir.HISTORY_COLUMNS, 1.0)
    (task.path / "history.csv").write_text(rundir.history_csv(
        [{**row, "epoch": e, "epoch_time_s": s, "image_size": image_size}
         for e, s in enumerate(seconds, 1)]))


def test_a_resumed_study_says_by_when_each_question_closes_once_its_networks_are_timed(
        tmp_path):
    study, tasks = seed_study_tasks(tmp_path)
    by_key = {t.key: t for t in tasks}
    bn, deep = by_key["part4-batchnorm seed 0"], by_key["part2-deep seed 0"]
    _trained(bn, [99.0, 40.0, 44.0])  # the first epoch pays the run's start-up: left out
    _trained(by_key["part4-batchnorm seed 1"], [50.0, 7.0], image_size=16)  # half size: out
    timed = schedule.timed_epochs(tasks)
    assert list(timed) == ["batchnorm"]
    assert timed["batchnorm"] == pytest.approx([84.0, 2 * schedule.epoch_cost(bn.cfg)])

    order = schedule.answers_first(tasks, study.questions, study.twins())
    closes = schedule.closing_order(order, study.questions, study.twins(), timed, jobs=2)
    # part 5's questions need only batch norm, timed at 42 s a full epoch: 4 runs of 50
    # epochs at most, less the 3 and 2 trained, a tenth of the images for two of them
    full, tenth = 42.0, 4.2
    five_tenth = ((50 - 3) * full + (50 - 2) * full + 2 * 50 * tenth) / 2
    assert closes[0] == ("5 too little data costs accuracy (4 runs, within about "
                         f"{progress.duration(five_tenth)})")
    # the deeper network is not timed: no time for it, nor for anything after it
    assert closes[3] == "4 batch norm: smaller gap than deep (8 runs)"
    _trained(deep, [60.0, 21.0])
    timed = schedule.timed_epochs(tasks)
    closes = schedule.closing_order(order, study.questions, study.twins(), timed, jobs=1)
    assert closes[3].startswith("4 batch norm: smaller gap than deep (8 runs, within about ")
    assert closes[4] == "1 simple over-fits (10 runs)"  # `simple` still untimed
