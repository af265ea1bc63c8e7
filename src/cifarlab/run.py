"""One complete run: data -> network -> fit -> evaluate on the test set -> run folder.

Everything that can be wrong with the input (settings, data, network shape, output folder)
is checked before the run folder is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__, distributed, figures, machine, models, normstats, rundir, trackers
from .budget import BudgetTooShort
from .config import RunConfig
from .data import Dataset, load_cifar10
from .errors import CifarlabError, is_out_of_memory, out_of_memory
from .evaluate import Evaluation, eval_batch, evaluate
from .loader import Batches, split_dataset
from .measures import measure
from .precision import prepare_model, resolve_device, run_precision
from .train import Diverged, FitResult, Interrupted, fit, own_random_state
from .width import choice_record, chosen_settings, describe_choice, width_for_budget

WHITEN_IMAGES = 5000  # training images whose patches set the whitening stem


@dataclass
class RunResult:
    path: Path
    config: RunConfig
    net: nn.Module
    fit: FitResult
    evaluation: Evaluation
    metrics: dict


def default_out(cfg: RunConfig, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(root) / f"{cfg.model}-{stamp}"
    n = 1
    while out.exists():
        n += 1
        out = Path(root) / f"{cfg.model}-{stamp}-{n}"
    return out


def environment(device: torch.device, group=None) -> dict:
    env = {"cifarlab": __version__, "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "device": str(device), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "cpu": machine.cpu()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if group is not None:
        env["distributed"] = distributed.describe(group)
    return env


def _create_out(cfg: RunConfig, out, group) -> Path:
    """Create the run folder; in a data-parallel run rank 0 creates it and tells the others
    where it is (or that it could not)."""
    if group is not None and not group.is_main:
        ok, text = group.broadcast(None)
        if not ok:
            raise distributed.Follower(text)
        return Path(text)
    try:
        path = rundir.create(Path(out) if out else default_out(cfg))
    except CifarlabError as e:
        if group is not None:
            group.broadcast((False, str(e)))
        raise
    if group is not None:
        group.broadcast((True, str(path)))
    return path


def build_network(cfg: RunConfig, num_classes: int, device: torch.device) -> nn.Module:
    net_cfg = dataclasses.replace(cfg.net_config(), num_classes=num_classes)
    with own_random_state(torch.device("cpu")):  # weights are drawn on the CPU
        torch.manual_seed(cfg.seed)  # the seed fixes the initial weights
        net = models.build(net_cfg)
    return prepare_model(net, device)


def train_run(cfg: RunConfig | None, out: str | Path | None = None,
              data: Dataset | None = None, verbose: bool = True, on_epoch_end=None,
              labels: dict | None = None, resume: bool = False,
              track: list[str] | None = None, mlflow_uri: str | None = None,
              sync_bn: bool = False) -> RunResult:
    """Train one network as `cfg` says and write its run folder (default runs/<model>-<time>).

    `on_epoch_end(row)` is called after each epoch's history row is saved; `labels` (e.g.
    the study and variant a run belongs to) are recorded in config.json. With `resume`, `out`
    is an unfinished run folder: training continues from its last complete epoch, exactly as
    if it had never stopped; `cfg` may be None (the folder's own settings) and is otherwise
    refused if it differs from them. `track` mirrors the run into trackers ("tensorboard",
    "mlflow"; see trackers.py).

    Started by torchrun with several processes, each process trains its share of every
    batch (see distributed.py; `sync_bn` synchronises batch norm across GPUs) and rank 0
    alone writes the run folder; the other ranks return a result without an evaluation.
    """
    trackers.check(track or [])
    state = None
    if resume:
        cfg, state, labels = _resume_point(cfg, out)
    cfg = cfg.validate().with_absolute_data()
    group = distributed.setup(cfg.device, sync_bn) if distributed.launched() else None
    try:
        result = _train(cfg, out, data, verbose, on_epoch_end, labels, resume, state, track,
                        mlflow_uri, group)
    except BaseException:
        distributed.teardown(group)
        raise
    distributed.teardown(group, finished=True)
    return result


def _train(cfg, out, data, verbose, on_epoch_end, labels, resume, state, track, mlflow_uri,
           group) -> RunResult:
    main = group is None or group.is_main
    verbose = verbose and main
    device = group.device if group is not None else resolve_device(cfg.device)
    dtype = run_precision(device, cfg)  # refused here, before anything is written
    dataset = data if data is not None else load_cifar10(cfg.data, progress=verbose)
    train, val, test = split_dataset(dataset, cfg.val_split, cfg.fraction, cfg.split_seed)
    # `built`: the settings the network is built and trained with, the budget's choice of
    # width and batch included (a resumed run keeps the choice it began with)
    built = chosen_settings(cfg, rundir.load_run(out)["config"], Path(out) / "config.json") \
        if resume else cfg
    train_b = Batches(train, built.batch_size, device, cfg.normalize)
    val_b = Batches(val, eval_batch(device), device, cfg.normalize)
    test_b = Batches(test, eval_batch(device), device, cfg.normalize)
    net = _network(built, dataset, train_b, group, state)
    plan, measuring_s = None, 0.0
    if not resume:
        wide, plan, measuring_s = width_for_budget(
            net, train_b, val_b, cfg, group,
            build=lambda settings: _network(settings, dataset, train_b, group, None))
        if wide is not None:
            built = dataclasses.replace(cfg, **wide)
            train_b = train_b.in_batches_of(built.batch_size)  # the images stay where they are
            net = _network(built, dataset, train_b, group, state)
    out = Path(out) if resume else _create_out(cfg, out, group)
    with (rundir.lock(out) if main else contextlib.nullcontext()), \
            _graceful_signals() as signalled, contextlib.ExitStack() as stack:
        if not resume and main:
            _write_config(out, cfg, net, dataset, labels, train, val, test, group, built)
        views = trackers.make(track or [], out, mlflow_uri) if main else []
        for view in views:
            stack.callback(view.close)
            view.start(cfg.to_dict())
        if verbose:
            _announce(built, net, dataset, train, val, device, out, state)
            if built.filters != cfg.filters:
                print(describe_choice(cfg, built), flush=True)
        config_hash = rundir.settings_hash(cfg.to_dict())

        def save_epoch(row):
            for view in views:
                view.epoch(row)
            if on_epoch_end is not None and main:
                on_epoch_end(row)

        def save_checkpoint(st):
            rundir.save_checkpoint(out / rundir.CHECKPOINT, {**st, "config_hash": config_hash})
            rundir.atomic_write(out / "history.csv", rundir.history_csv(st["history"]))

        try:
            result = fit(net, train_b, val_b, built, on_epoch_end=save_epoch, verbose=verbose,
                         checkpoint=save_checkpoint if main else None, resume=state,
                         stop_requested=signalled, group=group, plan=plan,
                         spent_before=measuring_s)
        except (BudgetTooShort, Diverged, Interrupted, RuntimeError) as e:
            instead = _after_failed_fit(e, out, main, resume, device, group)
            if instead is e:
                raise
            raise instead from None
        if not main:  # rank 0 alone evaluates and writes the results
            return RunResult(out, cfg, net, result, None, {})
        ev = evaluate(net, test_b, dataset.classes, tta=cfg.tta, dtype=dtype,
                      tta_share=cfg.tta_share)
        metrics = summarize(cfg, result, ev, device, group)
        metrics["batch_norm"] = batch_norm_record(net, train_b, cfg, result)
        write_outputs(out, net, result.history, ev, metrics)
        (out / rundir.CHECKPOINT).unlink(missing_ok=True)  # the finished run no longer needs it
        for view in views:
            view.finish(metrics, out)
    if verbose:
        print(summary_text(metrics, out), flush=True)
    late = signalled()
    if late:  # asked to stop while evaluating or writing: this run is done; stop what follows
        signal.raise_signal(late)
    return RunResult(out, cfg, net, result, ev, metrics)


def _announce(cfg: RunConfig, net: nn.Module, dataset: Dataset, train, val, device, out: Path,
              state: dict | None) -> None:
    """The two lines a run opens with: the network, and what it trains on and where."""
    net_cfg = dataclasses.replace(cfg.net_config(), num_classes=dataset.num_classes)
    val_text = f"{len(val):,} validation images" if cfg.val_split else \
        "validating on the test set (the original study's protocol)"
    again = f"; resuming after epoch {state['epoch']}" if state else ""
    dtype = "bf16" if run_precision(device, cfg) else "float32"
    kind = f": {machine.describe()}" if device.type == "cpu" else ""
    where = f"device {device}{kind}, {torch.get_num_threads()} threads, {dtype}"
    if distributed.launched():
        where = (f"data-parallel over {os.environ['WORLD_SIZE']} processes started by torchrun "
                 f"(batch {cfg.batch_size} split among them), each on {where}")
    print(f"{cfg.model}: {models.describe(net_cfg)}; "
          f"{models.count_parameters(net)[0]:,} trainable parameters\n"
          f"{len(train):,} training images, {val_text}; {where}; writing {out}{again}",
          flush=True)


def _after_failed_fit(e: BaseException, out: Path, main: bool, resume: bool, device,
                      group) -> BaseException:
    """Leave the run folder right after `fit` raised `e`, and return what to raise."""
    if is_out_of_memory(e):  # this process's own GPU, not "another process failed"
        return out_of_memory(e)
    if isinstance(e, BudgetTooShort):
        if main and not resume:  # nothing was trained: leave no run folder behind
            shutil.rmtree(out, ignore_errors=True)
    elif isinstance(e, Diverged):
        if main:
            rundir.write_json(out / "metrics.json", {
                "format_version": rundir.FORMAT_VERSION, "status": "failed",
                "error": str(e), "environment": environment(device, group)})
    elif isinstance(e, Interrupted):
        done = _last_epoch(out)
        saved = f"epochs 1-{done} are saved" if done else "no epoch had finished yet"
        if main:
            print(f"\nInterrupted ({signal.Signals(e.signum).name}); {saved}. Resume "
                  f"with: cifarlab train --resume {out}", file=sys.stderr, flush=True)
    elif group is not None:
        # A collective failed: gloo and NCCL report a dead or silent peer this way.
        return distributed.failure(e, out)
    return e


def _last_epoch(out: Path) -> int:
    try:
        return len(rundir.read_history(out / "history.csv"))
    except (OSError, ValueError):
        return 0


def _resume_point(cfg: RunConfig | None, out) -> tuple[RunConfig, dict | None, dict]:
    """The saved settings, checkpoint and labels of an unfinished run folder."""
    if out is None:
        raise CifarlabError("--resume needs the run folder to continue")
    out = Path(out)
    info = rundir.load_run(out)
    if rundir.is_finished(out):
        raise CifarlabError(f"{out} holds a finished run; there is nothing to resume")
    saved = RunConfig.from_dict(info["config"]["settings"], where=str(out / "config.json"))
    if cfg is not None:
        mine = cfg.with_absolute_data().to_dict()
        changed = [k for k, v in saved.to_dict().items() if mine[k] != v]
        if changed:
            raise CifarlabError(
                f"{out} was started with other settings ({', '.join(changed)} differ); resume "
                "it without changing them, or start a new run with another --out")
    state = rundir.load_checkpoint(out / rundir.CHECKPOINT)
    if state is not None and state.get("config_hash") != rundir.settings_hash(saved.to_dict()):
        raise CifarlabError(f"the checkpoint in {out} belongs to other settings than its "
                            "config.json; the folder was edited, so start a new run")
    return saved, state, info["config"].get("labels") or {}


def _network(built: RunConfig, dataset: Dataset, train_b: Batches, group, state) -> nn.Module:
    """The network as `built` says, on the batches' device; a new run's whitening stem (fast
    network) is fitted to the training images (a resumed one loads its own)."""
    net = build_network(built, dataset.num_classes, train_b.y.device)
    if group is not None and group.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if state is None:
        models.init_whitening(net, train_b.normalise(train_b.x[:WHITEN_IMAGES]))
    return net


def _write_config(out, cfg, net, dataset, labels, train, val, test, group=None,
                  built: RunConfig | None = None) -> None:
    """config.json: the settings as given (`cfg`) and the network as built from `built`
    (the same settings, or with the filters, batch and rates a budget chose:
    `budget_choice`)."""
    net_cfg = dataclasses.replace((built or cfg).net_config(), num_classes=dataset.num_classes)
    trainable, stats = models.count_parameters(net)
    rundir.write_json(out / "config.json", {
        "format_version": rundir.FORMAT_VERSION, "settings": cfg.to_dict(),
        "network": dataclasses.asdict(net_cfg), "network_summary": models.describe(net_cfg),
        "trainable_parameters": trainable, "non_trainable_parameters": stats,
        "classes": list(dataset.classes), "data_source": dataset.source,
        "labels": labels or {},
        "budget_choice": choice_record(cfg, built) if built is not None and built != cfg
        else None,
        "distributed": distributed.describe(group) if group is not None else None,
        "images": {"train": len(train), "validation": len(val) if cfg.val_split else 0,
                   "test": len(test)},
    })


@contextlib.contextmanager
def _graceful_signals():
    """The first SIGINT or SIGTERM asks training to stop between two steps (the epoch in
    progress is abandoned; every finished epoch is already checkpointed). A second one acts
    at once: every file on disk is written atomically, so nothing is left half-written. One
    that comes after training has ended is raised again once the run is saved (train_run),
    so a study stops after that run instead of losing the Ctrl-C."""
    requested = [0]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: 0
        return

    def handler(signum, frame):
        requested[0] = signum
        signal.signal(signum, previous[signum])  # the next one is not caught

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: requested[0]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def summarize(cfg: RunConfig, result: FitResult, ev: Evaluation, device, group=None) -> dict:
    stopper = result.stopper
    last = result.history[-1]

    def one(name):  # the definition every report and question uses (measures.py)
        return measure(result.history, {"weights_epoch": result.weights_epoch}, name)
    return {
        "format_version": rundir.FORMAT_VERSION,
        "status": "finished",
        "test_accuracy": ev.accuracy,
        "test_loss": ev.loss,
        "weights_epoch": result.weights_epoch,
        "weights": "restored best epoch" if result.restored else "last epoch",
        "monitor": stopper.monitor,
        "best_epoch": int(one("best_epoch")),  # of the highest validation accuracy
        "best_val_accuracy": one("best_val_accuracy"),
        "lowest_val_loss": min(r["val_loss"] for r in result.history),
        "final_val_accuracy": last["val_accuracy"],
        "overfit_gap": one("overfit_gap"),  # at the kept epoch (weights_epoch)
        "epochs_run": len(result.history),
        "planned_epochs": result.planned_epochs,
        "planned_steps": result.planned_steps,
        "half_size_share": result.half_size_share,  # of the steps, on 16x16 images
        # with a budget: the plan's seconds a step at each size (their ratio decides the share)
        "step_seconds": result.step_seconds,
        "tta": cfg.tta,
        "tta_share": cfg.tta_share,
        "stopped_epoch": stopper.stopped_epoch or None,
        "train_time_s": result.train_time_s,
        "validation_time_s": result.validation_s,  # part of train_time_s
        "compile_s": result.compile_s,
        "precision": "bfloat16" if run_precision(device, cfg) else "float32",
        "validated_on": "test set" if cfg.val_split == 0 else "validation split",
        "most_confused": [{"true": t, "predicted": p, "count": c}
                          for t, p, c in ev.most_confused(3)],
        "per_class": {name: {"precision": r["precision"], "recall": r["recall"],
                             "f1": r["f1-score"], "support": int(r["support"])}
                      for name, r in ev.report_dict().items() if name in ev.classes},
        "environment": environment(device, group),
    }


def batch_norm_record(net: nn.Module, train: Batches, cfg: RunConfig,
                      result: FitResult) -> dict | None:
    """What was done to the batch-norm statistics, and whether the kept network agrees with
    itself in training and evaluation mode on the same training images (None without
    batch norm)."""
    layers = normstats.norm_layers(net)
    if not layers:
        return None
    kept = result.weights_epoch in result.bn_reestimated
    record = {"setting": cfg.bn_reestimate, "reestimated_epochs": result.bn_reestimated,
              "kept_weights": "re-estimated over training images" if kept
              else "running averages from training"}
    if any(isinstance(m, nn.SyncBatchNorm) for m in layers):
        # Rank 0 alone evaluates; synchronised batch norm in training mode would wait for
        # the other processes, so the check is left out.
        return {**record, "mismatch": False, "check": "skipped (synchronised batch norm)"}
    images, labels = normstats.training_batches(train, train.batch_size, cfg.split_seed,
                                                normstats.CHECK_IMAGES)
    train_acc, eval_acc = normstats.mode_agreement(net, images, labels)
    return {**record, "sample_images": sum(len(x) for x in images),
            "train_mode_accuracy": train_acc, "eval_mode_accuracy": eval_acc,
            "mismatch": train_acc - eval_acc > normstats.MISMATCH}


def write_outputs(out: Path, net: nn.Module, history: list[dict], ev: Evaluation,
                  metrics: dict) -> None:
    """Everything but config.json; metrics.json last, as the mark of a finished run."""
    rundir.save_weights(out / "model.safetensors", net, {"format_version": rundir.FORMAT_VERSION})
    rundir.atomic_write(out / "history.csv", rundir.history_csv(history))
    write_classification_report(out, ev, metrics)
    figures.save(figures.run_curves(history, metrics["best_epoch"],
                                    title=f"{out.name}: test accuracy {ev.accuracy:.4f}"),
                 out / "curves.png")
    rundir.write_json(out / "metrics.json", metrics)


def write_classification_report(out: Path, ev: Evaluation, metrics: dict) -> None:
    header = (f"Test set, {len(ev.labels):,} images; weights of epoch {metrics['weights_epoch']} "
              f"({metrics['weights']}).\n\n")
    rundir.atomic_write(out / "classification_report.txt", header + ev.report())
    confusion = ev.confusion
    lines = ["true\\predicted," + ",".join(ev.classes)]
    lines += [f"{name}," + ",".join(str(int(v)) for v in row)
              for name, row in zip(ev.classes, confusion)]
    rundir.atomic_write(out / "confusion_matrix.csv", "\n".join(lines) + "\n")
    figures.save(figures.run_confusion(confusion, ev.classes,
                                       title=f"Confusion matrix (test accuracy {ev.accuracy:.4f})"),
                 out / "confusion_matrix.png")


def summary_text(metrics: dict, out: Path) -> str:
    pairs = ", ".join(f"{p['true']} -> {p['predicted']}: {p['count']}"
                      for p in metrics["most_confused"]) or "none"
    stopped = f"stopped early after epoch {metrics['stopped_epoch']}, " \
        if metrics["stopped_epoch"] else ""
    return (f"\nTest accuracy {metrics['test_accuracy']:.4f} (loss {metrics['test_loss']:.4f}) "
            f"with the weights of epoch {metrics['weights_epoch']} ({metrics['weights']}); "
            f"{stopped}highest val accuracy {metrics['best_val_accuracy']:.4f} at epoch "
            f"{metrics['best_epoch']}; over-fitting gap at the kept epoch "
            f"{metrics['overfit_gap']:+.4f}; "
            f"training took {metrics['train_time_s']:.0f} s.\n"
            f"Most confused (true -> predicted): {pairs}\n"
            f"Run folder: {out}")


def load_network(run: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a run's network from its config.json and load its weights."""
    info = rundir.load_run(run)
    net_cfg = models.NetConfig(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in info["config"]["network"].items()})
    net = models.build(net_cfg)
    rundir.load_weights(Path(run) / "model.safetensors", net)
    return prepare_model(net, torch.device(device)), info


def evaluation_precision(device: torch.device, cfg: RunConfig) -> torch.dtype | None:
    """The run's precision where this device has it; float32 where it does not (a bf16 run
    scored on a machine without native bf16: float32 holds its weights exactly)."""
    try:
        return run_precision(device, cfg)
    except CifarlabError:  # bf16 asked for, not native here
        return None


def test_evaluation(run: str | Path, data: str | None = None, device: str = "auto",
                    download: bool = True, progress: bool = True) -> tuple[Evaluation, Dataset]:
    """A run's saved weights on the test set, as the run itself evaluated them (its
    test-time augmentation and precision), with the data they were evaluated on."""
    run = Path(run)
    info = rundir.load_run(run)
    settings = RunConfig.from_dict(info["config"]["settings"], where=str(run / "config.json"))
    device = resolve_device(settings.device if device == "auto" else device)
    net, info = load_network(run, device)
    dataset = load_cifar10(data if data is not None else settings.data, download=download,
                           progress=progress)
    if tuple(dataset.classes) != tuple(info["config"]["classes"]):
        raise CifarlabError(f"the data's classes ({', '.join(dataset.classes)}) differ from the "
                            f"run's ({', '.join(info['config']['classes'])}); pass the --data "
                            "the run was trained on")
    test_b = Batches(split_dataset(dataset, 0)[2], eval_batch(device), device, settings.normalize)
    ev = evaluate(net, test_b, dataset.classes, tta=settings.tta, tta_share=settings.tta_share,
                  dtype=evaluation_precision(device, settings))
    return ev, dataset


def evaluate_run(run: str | Path, data: str | None = None, verbose: bool = True) -> Evaluation:
    """Re-create a run's report and confusion matrix on the test set from its saved weights."""
    run = Path(run)
    info = rundir.load_run(run)
    ev, _ = test_evaluation(run, data, progress=verbose)
    metrics = dict(info["metrics"]) or {"weights_epoch": "?", "weights": "saved weights"}
    metrics.setdefault("weights_epoch", "?")
    metrics.setdefault("weights", "saved weights")
    write_classification_report(run, ev, metrics)
    if verbose:
        pairs = ", ".join(f"{t} -> {p}: {c}" for t, p, c in ev.most_confused(3))
        print(ev.report() + f"\nTest accuracy {ev.accuracy:.4f}; most confused: {pairs}\n"
              f"Rewrote {run / 'classification_report.txt'}, confusion_matrix.csv and .png",
              flush=True)
    return ev
