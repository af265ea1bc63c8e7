"""cifarlab: run, compare and explain convolutional-network experiments on CIFAR-10.

The Python API in one glance (the command line is a thin shell over it):

    from cifarlab import RunConfig, train_run, load_cifar10
    data = load_cifar10("path/to/cifar-10-batches-py")
    result = train_run(RunConfig(model="batchnorm", epochs=20,
                                 early_stopping="val_accuracy:5"), data=data)
    result.metrics["test_accuracy"]
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
           "load_network", "train_run", "load_run", "fit", "__version__"]
