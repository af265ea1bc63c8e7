"""What a run is made of: every setting, its default, its type and its allowed range.

One flat dataclass serves the command line, TOML config files, study files and the Python
API, so a setting has one name and one check everywhere. Network settings left at None take
the preset's value.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from .errors import CifarlabError

if typing.TYPE_CHECKING:
    from . import models

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "onecycle", "cosine", "linear")
DEVICES = ("auto", "cpu", "cuda")
NORMALIZE = ("unit", "standard")
BN_REESTIMATE = ("auto", "always", "never")
PRECISIONS = ("auto", "float32", "bf16")


def cpu_threads(share: int = 1) -> int:
    """Torch threads for each of `share` processes that split this machine's CPUs:
    CIFARLAB_THREADS if set (the same for every process), else the CPUs this process may
    run on (its affinity: `taskset` or a container may allow fewer than the machine has)
    divided among them."""
    text = os.environ.get("CIFARLAB_THREADS")
    if text:
        if not text.isdigit() or int(text) < 1:
            raise CifarlabError(f"CIFARLAB_THREADS must be a whole number of threads, 1 or "
                                f"more, got {text!r}")
        return int(text)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // share)


# A recipe is a network and a way to train it, chosen together; settings given explicitly
# (flags, config files, study variants) override the recipe's. The optimiser, learning rates,
# batch size and the progressive share were chosen by paired runs at a fixed length and at
# 90 s budgets on a 2-core CPU (benchmarks/README.md): Muon for the filters, Nesterov SGD
# for the rest, batch 128 (Muon's per-step cost is shared by more images). Test-time
# augmentation's views go to the least confident 30% of the test images only: the same
# accuracy within one image in 10,000 on three runs, in half the time.
_FAST = dict(model="fast", optimizer="muon", muon_lr=0.12, muon_momentum=0.6, lr=0.5,
             momentum=0.85, nesterov=True, weight_decay=5e-4, label_smoothing=0.2,
             schedule="linear", batch_size=128, augment="altflip,translate:2",
             normalize="standard", progressive=0.5, tta=2, tta_share=0.3, epochs=8)
RECIPES = {
    "fast": _FAST,
    # The GPU recipe: the fast network at the published CIFAR-10 speed records' width
    # (64-256-256) with airbench94_muon's training: a fixed 8 epochs at full size in batches
    # of 2,000 (a GPU needs large batches to be busy), its rates carried over to cifarlab's
    # mean loss (airbench sums it over the batch: rates x 2000) and head scale (1/9 where
    # airbench divides by 256: the head's rate x (9/256)^2), with its decay of 0.004 per
    # step, no warm-up and the whitening bias trained for 3 of the 8 epochs, every test
    # image with all views as the record. Its full-length accuracy is in
    # benchmarks/README.md. Add --compile on a GPU.
    "gpu94": {**_FAST, "filters": (64, 256, 256), "batch_size": 2000, "muon_lr": 0.24,
              "lr": 1.66, "weight_decay": 0.0024, "bias_lr": 106.0, "warmup": 0.0,
              "whiten_bias": 0.375, "progressive": 0.0, "tta_share": 1.0},
}


def with_recipe(values: dict) -> dict:
    """`values` over the defaults of the recipe they name (if any)."""
    name = values.get("recipe")
    if name is None:
        return dict(values)
    if name not in RECIPES:
        raise CifarlabError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], **values}


def parse_budget(text: str | None) -> float | None:
    """'90s', '5m', '1.5h' or a bare number of seconds -> seconds (None stays None)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    body = text.strip().lower()
    factor = units.get(body[-1:], None)
    number = body[:-1] if factor else body
    try:
        seconds = float(number) * (factor or 1)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise CifarlabError(f"budget {text!r} is not a positive duration; write e.g. 90s, 5m "
                            "or 1.5h")
    return seconds


@dataclass
class RunConfig:
    # --- a recipe (network + training) whose settings fill in whatever is not given
    recipe: str | None = None
    # --- the network: a preset, optionally varied
    model: str = "simple"
    blocks: int | None = None
    filters: tuple[int, ...] | None = None
    convs_per_block: int | None = None
    kernel_size: int | None = None
    batchnorm: bool | None = None
    head: str | None = None
    dense: tuple[int, ...] | None = None
    dropout: float | None = None
    # --- the data
    data: str | None = None  # None: $CIFARLAB_DATA or the user cache (downloaded if missing)
    val_split: int = 5000  # images carved from the training set; 0 validates on the test set
    fraction: float = 1.0  # of the remaining training images, stratified
    split_seed: int = 0  # fixes the validation split and subset, the same for every run seed
    normalize: str = "unit"  # "unit": pixels in [0, 1] as in the study; "standard": mean/std
    augment: str | None = None  # e.g. "flip,translate:4,cutout:8" (the study used none)
    # --- optimisation (defaults are the study's: Adam 1e-3, batch 32)
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only (with muon: for biases, batch-norm shifts, the head)
    muon_lr: float = 0.05  # muon only: the filters' relative change per step (see muon.py)
    muon_momentum: float = 0.6  # muon only
    # SGD and muon: the rate of biases and batch-norm shifts (None: lr). Their decay per
    # step stays lr x weight_decay, whatever their rate (see optim.make_optimizer)
    bias_lr: float | None = None
    nesterov: bool = True  # SGD only
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "constant"  # per-step "onecycle", "cosine" or "linear" (warm-up, decay)
    warmup: float = 0.2  # linear schedule: share of the steps warming up (0: decay at once)
    # fast networks with sgd or muon and the linear schedule: the share of the steps in
    # which the whitening stem's bias trains (its schedule squeezed into them), then frozen
    whiten_bias: float = 1.0
    # slow weights the network is pulled back to every 5 steps and ends on (lookahead.py)
    lookahead: bool = False
    budget: str | None = None  # e.g. "5m": train as many steps as fit (replaces epochs)
    progressive: float = 0.0  # fraction of the steps trained on half-resolution images
    tta: int = 0  # test-time augmentation: 0 none, 1 flips, 2 flips and 1-pixel shifts
    # the share of the test images that get all of tta's views: the least confident by
    # their plain prediction (the others keep it)
    tta_share: float = 1.0
    # batch-norm running statistics re-estimated before each evaluation (see normstats.py)
    bn_reestimate: str = "auto"
    # --- early stopping, like Keras' callback
    early_stopping: str | None = None  # "val_accuracy:10" = metric:patience
    min_delta: float = 0.0
    start_from_epoch: int = 0
    # --- the run
    seed: int = 0
    device: str = "auto"
    compile: bool = False  # torch.compile the training step (a GPU option; see precision.py)
    # "auto": bf16 on GPUs that have it natively and for the fast network on CPUs that have
    # it natively (AVX-512 BF16, AMX), else float32; "bf16" on any device with native bf16;
    # see precision.precision
    precision: str = "auto"

    def net_config(self) -> models.NetConfig:
        from . import models  # here, not above: the command line's --help needs no torch
        changes = {name: getattr(self, name) for name in models.NET_OVERRIDES}
        return models.customize(models.preset(self.model), **changes)

    def with_absolute_data(self) -> "RunConfig":
        """The same settings with `data` as an absolute path, as run folders record it (so
        `cifarlab evaluate` works from any folder and settings compare equal)."""
        if not self.data:
            return self
        return dataclasses.replace(self, data=str(Path(self.data).expanduser().resolve()))

    def validate(self) -> "RunConfig":
        """Check ranges and choices; return self so calls can chain."""
        def need(ok, message):
            if not ok:
                raise CifarlabError(message)
        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        need(0 < self.fraction <= 1, f"fraction must be in (0, 1], got {self.fraction}")
        need(self.val_split >= 0, f"val_split must be 0 or more images, got {self.val_split}")
        need(self.lr > 0, f"learning rate must be positive, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(self.muon_lr > 0, f"muon_lr must be positive, got {self.muon_lr}")
        need(self.bias_lr is None or self.bias_lr > 0,
             f"bias_lr must be positive, got {self.bias_lr}")
        need(self.bias_lr is None or self.optimizer in ("sgd", "muon"),
             f"bias_lr is a rate for SGD steps (optimizer sgd or muon), not "
             f"{self.optimizer}; drop --bias-lr or change the optimizer")
        need(0 <= self.muon_momentum < 1,
             f"muon_momentum must be in [0, 1), got {self.muon_momentum}")
        need(self.weight_decay >= 0, f"weight decay must be 0 or more, got {self.weight_decay}")
        need(0 <= self.label_smoothing < 1,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.min_delta >= 0, f"min_delta must be 0 or more, got {self.min_delta}")
        need(self.start_from_epoch >= 0,
             f"start_from_epoch must be 0 or more, got {self.start_from_epoch}")
        need(0 <= self.progressive < 1,
             f"progressive must be in [0, 1), got {self.progressive}")
        need(0 <= self.warmup < 1, f"warmup must be in [0, 1), got {self.warmup}")
        need(0 < self.whiten_bias <= 1, f"whiten_bias must be in (0, 1], got {self.whiten_bias}")
        need(self.whiten_bias == 1 or (self.schedule == "linear"
                                       and self.optimizer in ("sgd", "muon")),
             f"whiten_bias {self.whiten_bias:g} shortens the linear schedule of an SGD step; "
             "use --schedule linear with --optimizer sgd or muon, or drop --whiten-bias")
        need(self.tta in (0, 1, 2), f"tta must be 0, 1 or 2, got {self.tta}")
        need(0 < self.tta_share <= 1, f"tta_share must be in (0, 1], got {self.tta_share}")
        parse_budget(self.budget)
        if self.recipe is not None:
            with_recipe({"recipe": self.recipe})
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("device", DEVICES), ("normalize", NORMALIZE),
                              ("bn_reestimate", BN_REESTIMATE), ("precision", PRECISIONS)):
            value = getattr(self, name)
            need(value in allowed, f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        from . import augment, early_stopping  # (with torch, so only when checking)
        if self.early_stopping:
            early_stopping.parse_spec(self.early_stopping)
        augment.parse(self.augment)
        net = self.net_config()  # unknown preset, impossible shape
        need(self.optimizer != "muon" or net.batchnorm,
             f"optimizer muon renormalises the filters, which only a network with batch norm "
             f"after every convolution ignores; {self.model!r} has none here, so add "
             "--batchnorm or use sgd or adam")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_plain(cls, values: dict) -> "RunConfig":
        """The inverse of `to_dict` for a config cifarlab made itself (sent to a job process
        or a Ray task): lists back to tuples (every setting is given, so the recipe changes
        none)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    @classmethod
    def from_dict(cls, values: dict, where: str = "config") -> "RunConfig":
        """Build from plain data (JSON, TOML), refusing unknown keys and wrong types."""
        return cls(**check_settings(values, where)).validate()


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def _applying_recipe(init):
    """RunConfig's own __init__ with the recipe it names filled in under the settings given,
    as the command line, study files and from_dict apply it: RunConfig(recipe="fast") is the
    fast recipe, and a call that gives every setting (replace, from_plain) is unchanged."""
    @functools.wraps(init)
    def __init__(self, *args, **given):
        init(self, **with_recipe({**dict(zip(FIELDS, args)), **given}))
    return __init__


RunConfig.__init__ = _applying_recipe(RunConfig.__init__)


def check_settings(values: dict, where: str) -> dict:
    """Type-check a mapping of setting names to values; lists become tuples."""
    out = {}
    for key, value in values.items():
        if key not in FIELDS:
            close = [name for name in FIELDS if name.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise CifarlabError(f"{where}: unknown setting {key!r}{hint}; see `cifarlab train "
                                "--help` for the settings")
        out[key] = _coerce(key, value, _HINTS[key], where)
    return out


def _coerce(key, value, hint, where):
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if value is None and type(None) in typing.get_args(hint):
        return None
    for kind in kinds:
        origin = typing.get_origin(kind)
        if origin is tuple and isinstance(value, (list, tuple)) and \
                all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    expected = " or ".join("a list of whole numbers" if typing.get_origin(k) is tuple
                           else {int: "a whole number", float: "a number", bool: "true or false",
                                 str: "a string"}[k] for k in kinds)
    raise CifarlabError(f"{where}: setting {key!r} must be {expected}, got {value!r}")


def load_toml(path: str | Path) -> dict:
    """Read a TOML file as data (never executed), with one-sentence errors."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise CifarlabError(f"config file {path} does not exist") from None
    except OSError as e:
        raise CifarlabError(f"cannot read config file {path} ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CifarlabError(f"{path} is not valid TOML ({e}); fix the line it names") from None
