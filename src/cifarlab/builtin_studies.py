"""The built-in studies, as data in the shape of a study file: the original course study
(`seed`) with its five conclusions as questions, its quick version (the README's main job) and
three studies of one factor each (depth, regularisation, data size)."""

from __future__ import annotations


def _ask(name: str, metric: str, variants, expect: str, claim: str,
         margin: float | None = None) -> dict:
    """One [[question]] table: `variants` a name (one variant against `than`) or a pair."""
    q = {"name": name, "claim": claim, "metric": metric,
         "variant" if isinstance(variants, str) else "compare": variants, "expect": expect}
    return q if margin is None else {**q, "margin": margin}


# What a short study leaves out of the ten: every question shares the budget's second round
# and tightens Holm's thresholds for the others, and these two (one of them a whole variant
# of simple-network runs) are the least likely to be decided in minutes.
SHORT_LEAVES_OUT = ("3 stopping on val loss costs no accuracy",
                    "4 batch norm: smaller gap than deep")


def original_questions(smaller: str, smallest: str, everything: str, share: str,
                       least: str, short: bool = False) -> list[dict]:
    """The original report's five conclusions (docs/original-study.md) as ten questions, for
    a study with the seed study's variant names; part 5's variants are named by the caller
    (`share` and `least` say in words what part of the data `smaller` and `smallest` use).
    `short`: the eight that a short study asks (SHORT_LEAVES_OUT)."""
    simple, deep = "part1-simple", "part2-deep"
    es_acc, es_loss, bn = "part3-es-val_accuracy", "part3-es-val_loss", "part4-batchnorm"
    gap = "train/validation gap"
    questions = [
        _ask("1 simple over-fits", "gap_growth", simple, "higher",
             "Trained to the end, the simple network over-fits: after its validation loss "
             "bottoms out, the train/validation accuracy gap keeps widening"),
        _ask("2 deeper is no better", "test_accuracy", [deep, simple], "not higher",
             "The deeper network is no better than the simple one (not by a point)", 0.01),
        _ask("3 early stopping stops before over-fitting", "overfit_gap", [es_acc, simple],
             "lower", f"Early stopping on validation accuracy keeps an epoch with a smaller "
             f"{gap} than training to the end"),
        _ask("3 early stopping costs no accuracy", "test_accuracy", [es_acc, simple],
             "not lower",
             "Early stopping on validation accuracy loses no test accuracy (not a point)", 0.01),
        _ask("3 stopping on val loss costs no accuracy", "test_accuracy", [es_loss, simple],
             "not lower",
             "Early stopping on validation loss loses no test accuracy (not a point)", 0.01),
        _ask("4 batch norm: smaller gap than simple", "overfit_gap", [bn, simple], "lower",
             f"Batch norm and dropout give a smaller {gap} than the simple network"),
        _ask("4 batch norm: smaller gap than deep", "overfit_gap", [bn, deep], "lower",
             f"Batch norm and dropout give a smaller {gap} than the deeper network"),
        _ask("5 less data, similar accuracy", "test_accuracy", [smaller, everything],
             "equivalent", f"Trained on {share} of the images, the batch-norm network "
             "reaches similar test accuracy (within 2 points)", 0.02),
        _ask("5 less data, less time", "train_time_s", [smaller, everything], "lower",
             f"Trained on {share} of the images, it takes less time"),
        _ask("5 too little data costs accuracy", "test_accuracy", [smallest, everything],
             "lower", f"Trained on {least} of the images, it loses more than 2 points", 0.02),
    ]
    return [q for q in questions if not (short and q["name"] in SHORT_LEAVES_OUT)]


BUILTINS: dict[str, dict] = {
    "seed": {
        "name": "seed",
        "description": "The original course study, part by part (SEED-STUDY.md), over seeds.",
        "seeds": 3,
        "baseline": "part1-simple",
        "defaults": {"batch_size": 32, "optimizer": "adam", "lr": 1e-3},
        "variant": [
            {"name": "part1-simple", "model": "simple", "epochs": 35},
            {"name": "part2-deep", "model": "deep", "epochs": 50},
            {"name": "part3-es-val_accuracy", "model": "simple", "epochs": 50,
             "early_stopping": "val_accuracy:10"},
            {"name": "part3-es-val_loss", "model": "simple", "epochs": 50,
             "early_stopping": "val_loss:10"},
            {"name": "part4-batchnorm", "model": "batchnorm", "epochs": 50,
             "early_stopping": "val_accuracy:10"},
            {"name": "part5-batchnorm", "model": "batchnorm", "epochs": 50,
             "early_stopping": "val_accuracy:10", "grid": {"fraction": [0.1, 0.2, 0.5, 1.0]}},
        ],
        "question": original_questions("part5-batchnorm fraction=0.5",
                                       "part5-batchnorm fraction=0.1",
                                       "part5-batchnorm fraction=1", "half", "a tenth"),
    },
    "quick": {
        "name": "quick",
        "description": "The seed study's five parts sized for ~10 minutes on 2 CPU cores: "
                       "980 training images for up to 20 epochs, 3 seeds, 8 of its 10 "
                       "questions; the README's main job runs it on a time budget.",
        "seeds": 3,
        "baseline": "part1-simple",
        # Few images and many epochs, so that what the original saw in 35-50 epochs on
        # 45,000 images happens here too: the simple network learns (0.35-0.40) and then
        # over-fits (its validation loss turns near epoch 14 and the gap passes 30 points by
        # epoch 20), which is what conclusions 1, 3 and 4 are about. Early stopping counts
        # only a gain of a full point (Keras' min_delta) with the original's share of
        # patience (10 of 50 epochs).
        "defaults": {"batch_size": 32, "optimizer": "adam", "lr": 1e-3, "fraction": 0.02,
                     "val_split": 1000, "epochs": 20},
        "variant": [
            {"name": "part1-simple", "model": "simple"},
            {"name": "part2-deep", "model": "deep"},
            {"name": "part3-es-val_accuracy", "model": "simple",
             "early_stopping": "val_accuracy:4", "min_delta": 0.01},
            {"name": "part4-batchnorm", "model": "batchnorm",
             "early_stopping": "val_accuracy:4", "min_delta": 0.01},
            {"name": "part5-batchnorm", "model": "batchnorm",
             "early_stopping": "val_accuracy:4", "min_delta": 0.01,
             "grid": {"fraction": [0.004, 0.01, 0.02]}},
        ],
        # Part 5 as the original drew it: half the images, and a fifth (its tenth would be
        # 98 images here), where the curve is steep enough to show in a few seeds.
        "question": original_questions("part5-batchnorm fraction=0.01",
                                       "part5-batchnorm fraction=0.004",
                                       "part5-batchnorm fraction=0.02", "half", "a fifth",
                                       short=True),
    },
    "depth": {
        "name": "depth",
        "description": "How depth changes the result: 1-5 conv blocks x 1-3 dense layers.",
        "seeds": 3,
        "baseline": "depth blocks=3 dense=128",
        "defaults": {"model": "simple", "epochs": 20, "early_stopping": "val_accuracy:5"},
        "variant": [{"name": "depth", "grid": {"blocks": [1, 2, 3, 4, 5],
                                               "dense": [[128], [128, 64], [128, 64, 32]]}}],
    },
    "regularization": {
        "name": "regularization",
        "description": "Dropout 0 / 0.2 / 0.5 x batch norm off / on, with and without early "
                       "stopping.",
        "seeds": 3,
        "baseline": "no-es dropout=0 batchnorm=false",
        "defaults": {"model": "simple", "epochs": 20},
        "variant": [
            {"name": "no-es", "grid": {"dropout": [0.0, 0.2, 0.5], "batchnorm": [False, True]}},
            {"name": "es", "early_stopping": "val_accuracy:5",
             "grid": {"dropout": [0.0, 0.2, 0.5], "batchnorm": [False, True]}},
        ],
    },
    "data-size": {
        "name": "data-size",
        "description": "Accuracy and training time against the amount of training data.",
        "seeds": 3,
        "baseline": "batchnorm fraction=1",
        "defaults": {"model": "batchnorm", "epochs": 30, "early_stopping": "val_accuracy:5"},
        "variant": [{"name": "batchnorm",
                     "grid": {"fraction": [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0]}}],
    },
}
