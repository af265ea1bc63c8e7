import copy

import pytest
import torch

from cifarlab.early_stopping import EarlyStopping, parse_spec
from cifarlab.errors import CifarlabError


def run(stopper, values, key="val_accuracy", model=None):
    """Feed a scripted metric sequence; return the epoch at which it says stop, or None."""
    for epoch, value in enumerate(values, 1):
        if model is not None:
            with torch.no_grad():
                model.weight.fill_(epoch)  # the weights remember which epoch they are from
        if stopper.update(epoch, {key: value}, model):
            return epoch
    return None


def test_stops_after_patience_epochs_without_improvement():
    stopper = EarlyStopping("val_accuracy", patience=3)
    assert run(stopper, [.50, .60, .70, .69, .70, .65, .90]) == 6
    assert (stopper.best_epoch, stopper.best, stopper.stopped_epoch) == (3, .70, 6)


def test_patience_zero_stops_at_the_first_epoch_without_improvement_like_keras():
    assert run(EarlyStopping("val_accuracy", patience=0), [.5, .6, .6]) == 3


def test_val_loss_is_minimised():
    stopper = EarlyStopping("val_loss", patience=2)
    assert run(stopper, [1.0, 0.8, 0.9, 0.7, 0.75, 0.71], key="val_loss") == 6
    assert stopper.best_epoch == 4 and stopper.best == 0.7


def test_min_delta_ignores_small_improvements():
    stopper = EarlyStopping("val_accuracy", patience=2, min_delta=0.05)
    assert run(stopper, [.50, .52, .54, .60]) == 3
    assert stopper.best_epoch == 1


def test_start_from_epoch_ignores_warm_up_epochs():
    stopper = EarlyStopping("val_accuracy", patience=1, start_from_epoch=3)
    # Epochs 1-3 are ignored even though .9 at epoch 2 would have been the best.
    assert run(stopper, [.5, .9, .4, .6, .7, .65]) == 6
    assert stopper.best_epoch == 5


def test_never_stops_with_patience_none_but_tracks_the_best_epoch():
    stopper = EarlyStopping("val_accuracy", patience=None, restore_best_weights=False)
    assert run(stopper, [.3, .5, .4, .2, .1]) is None
    assert stopper.best_epoch == 2 and stopper.best_weights is None


def test_restores_best_weights_when_patience_runs_out():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping("val_accuracy", patience=2)
    assert run(stopper, [.5, .8, .7, .6, .9], model=model) == 4
    assert stopper.restore(model)
    assert model.weight.item() == 2.0


def test_restores_best_weights_when_the_epochs_run_out_first():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping("val_accuracy", patience=10)
    assert run(stopper, [.5, .8, .7], model=model) is None
    assert model.weight.item() == 3.0
    stopper.restore(model)
    assert model.weight.item() == 2.0


def test_best_weights_are_a_copy_not_a_live_view():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping("val_accuracy", patience=5)
    run(stopper, [.9], model=model)
    with torch.no_grad():
        model.weight.fill_(42)
    assert stopper.best_weights["weight"].item() == 1.0


def test_state_round_trips_so_a_resume_keeps_patience_and_best():
    a = EarlyStopping("val_accuracy", patience=3)
    run(a, [.5, .7, .6])
    b = EarlyStopping("val_accuracy", patience=3)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.update(4, {"val_accuracy": .6}) is False
    assert b.update(5, {"val_accuracy": .6}) is True  # wait reached 3: epochs 3, 4, 5


@pytest.mark.parametrize("spec,expected", [("val_accuracy:10", ("val_accuracy", 10)),
                                           ("val_loss:0", ("val_loss", 0)),
                                           ("val_loss", ("val_loss", 10))])
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec,message", [("val_acc:5", "metric 'val_acc' is unknown"),
                                          ("val_loss:-1", "patience must be 0 or more"),
                                          ("val_loss:x", "'x' is not a whole number")])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(CifarlabError, match=message):
        parse_spec(spec)
