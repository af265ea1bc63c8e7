"""cifarlab: run, compare and explain convolutional-network experiments on CIFAR-10.

The Python API in one glance (the command line is a thin shell over it):

    from cifarlab import RunConfig, train_run, load_cifar10
    data = load_cifar10("path/to/cifar-10-batches-py")
    result = train_run(RunConfig(model="batchnorm", epochs=20,
                                 early_stopping="val_accuracy:5"), data=data)
    result.metrics["test_accuracy"]

A whole study, its progress and its report, as `cifarlab study` runs it:

    from cifarlab import run_study
    done = run_study("quick", out="runs/quick")
    print(done.text)
"""

__version__ = "0.1.0"

from .config import RunConfig  # noqa: E402
from .data import Dataset, load_cifar10  # noqa: E402
from .early_stopping import EarlyStopping  # noqa: E402
from .errors import CifarlabError  # noqa: E402
from .models import NetConfig, build, count_parameters, preset  # noqa: E402
from .run import RunResult, evaluate_run, load_network, train_run  # noqa: E402
from .rundir import load_run  # noqa: E402
from .train import fit  # noqa: E402

__all__ = ["RunConfig", "Dataset", "load_cifar10", "EarlyStopping", "CifarlabError",
           "NetConfig", "build", "count_parameters", "preset", "RunResult", "evaluate_run",
           "load_network", "train_run", "load_run", "fit", "run_study", "StudyOutcome",
           "__version__"]


def __getattr__(name: str):
    # A study's statistics libraries load only when a study is run from Python, so that
    # `import cifarlab` (and every command) stays as quick to start as before.
    if name in ("run_study", "StudyOutcome"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")
