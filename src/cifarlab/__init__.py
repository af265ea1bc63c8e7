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

import importlib

__version__ = "0.1.0"

# Each public name and the module that defines it, imported when first used (PEP 562), so
# that `import cifarlab` and `cifarlab --help` do not load torch.
_HOMES = {"RunConfig": "config", "Dataset": "data", "load_cifar10": "data",
          "EarlyStopping": "early_stopping", "CifarlabError": "errors", "NetConfig": "models",
          "build": "models", "count_parameters": "models", "preset": "models",
          "RunResult": "run", "evaluate_run": "run", "load_network": "run", "train_run": "run",
          "load_run": "rundir", "fit": "train", "run_study": "api", "StudyOutcome": "api"}

__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
