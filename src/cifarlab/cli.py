"""The `cifarlab` command: a thin shell over the Python API.

Bad input of any kind ends in one sentence on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import typing
from pathlib import Path

from . import __version__
from .cli_help import EXAMPLES, HELP
from .config import FIELDS, RunConfig, check_settings, cpu_threads, load_toml
from .errors import CifarlabError, is_out_of_memory, out_of_memory
from .trackers import parse as parse_trackers


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one sentence, no usage dump
        self.exit(2, f"cifarlab: error: {message}; see `{self.prog} --help`\n")


def _int_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers") from None


def _delta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"--equivalence must be a difference in accuracy "
                                         f"between 0 and 1, e.g. 0.01, got {text!r}")
    return value


def _typed(kind):
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            word = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {word}") from None
    parse.__name__ = kind.__name__
    return parse


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, defaulting to None so config files are not overridden."""
    hints = typing.get_type_hints(RunConfig)
    defaults = RunConfig()
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        kinds = [a for a in typing.get_args(hints[name]) if a is not type(None)] or [hints[name]]
        kind = kinds[0]
        default = getattr(defaults, name)
        help_text = HELP[name] + (f" (default: {default})" if default not in (None, ()) else "")
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
        elif typing.get_origin(kind) is tuple:
            p.add_argument(flag, type=_int_list, default=None, metavar="N,N,...", help=help_text)
        else:
            p.add_argument(flag, type=_typed(kind) if kind in (int, float) else str,
                           default=None, metavar=name.upper(), help=help_text)


def settings_from_args(args, saved: dict | None = None) -> RunConfig:
    """The run's settings, each source over the one before: `saved` (a resumed run's own),
    the --config file, the flags given; a recipe they name fills in the rest. Not validated
    here: a resumed run's are first compared with its own."""
    values = check_settings(saved or {}, f"{args.resume}/config.json")
    if args.config:
        values.update(check_settings(load_toml(args.config), args.config))
    values.update({k: getattr(args, k) for k in FIELDS if getattr(args, k) is not None})
    return RunConfig(**values)


def cmd_train(args) -> int:
    from . import distributed
    from .precision import resolve_device
    from .run import train_run
    from .study import strip_option
    if args.resume:
        given = args.config or any(getattr(args, k) is not None for k in FIELDS)
        cfg = None
        if given:  # settings on the command line must match the run's own
            from .rundir import load_run
            cfg = settings_from_args(args, load_run(args.resume)["config"]["settings"])
        if args.nproc is not None and not distributed.launched():
            return distributed.launch(args.nproc, strip_option(args.argv, "--nproc"))
        train_run(cfg, out=args.resume, verbose=not args.quiet, resume=True,
                  track=parse_trackers(args.track), mlflow_uri=args.mlflow_uri,
                  sync_bn=args.sync_bn)
        return 0
    cfg = settings_from_args(args).validate()
    if args.nproc is not None and not distributed.launched():
        if args.sync_bn and resolve_device(cfg.device).type != "cuda":
            raise CifarlabError(distributed.SYNC_BN_CPU)
        # Bad settings or data are one sentence here, before any process starts; decoding
        # the data here also leaves it cached for every process.
        from .data import load_cifar10
        load_cifar10(cfg.validate().data, progress=not args.quiet)
        return distributed.launch(args.nproc, strip_option(args.argv, "--nproc"))
    train_run(cfg, out=args.out, verbose=not args.quiet, track=parse_trackers(args.track),
              mlflow_uri=args.mlflow_uri, sync_bn=args.sync_bn)
    return 0


def cmd_evaluate(args) -> int:
    from .run import evaluate_run
    evaluate_run(args.run_dir, data=args.data)
    return 0


def cmd_models(args) -> int:
    from . import models
    rows = []
    for name, (description, cfg) in models.PRESETS.items():
        trainable, stats = models.count_parameters(models.build(cfg))
        rows.append((name, description, f"{trainable:,}", f"{trainable + stats:,}"))
    headers = ("preset", "description", "trainable", "total")
    widths = [max(len(r[i]) for r in rows + [headers]) for i in range(4)]
    line = "  ".join("{:<%d}" % widths[0] if i == 0 else "{:<%d}" % w if i == 1 else "{:>%d}" % w
                     for i, w in enumerate(widths))
    print(line.format(*headers))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print("\nTotal = trainable parameters + batch-norm statistics (Keras' non-trainable count).")
    return 0


def cmd_study(args) -> int:
    from . import study as studies
    if args.list:
        print(studies.describe_builtins())
        return 0
    if not args.study:
        raise CifarlabError("name a study file or a built-in study (see `cifarlab study --list`)")
    written = studies.prepare(args.study, {"data": args.data, "device": args.device,
                                           "precision": args.precision})
    given = studies.Scale(args.seeds, 1.0 if args.epochs_scale is None else args.epochs_scale,
                          args.fraction, args.max_epochs)
    st = studies.apply_scale(written, given)
    if args.print:
        print(studies.to_toml(st), end="")
        return 0
    if args.precision is None:
        from .precision import in_one_precision
        before = st
        written, st = (in_one_precision(x) for x in (written, st))
        if st is not before:
            print("Precision: float32 for every run: on this CPU only some of the study's "
                  "networks train in bf16 by default, and a study compares its variants in "
                  "one precision (--precision bf16 computes them all in bf16).")
    st.command = written.command = ["cifarlab", *args.argv]
    from . import report
    from . import results as readback
    from .runner import run_study
    out = Path(args.out or f"runs/study-{studies.slug(st.name)}")
    started = time.perf_counter()
    outcome = None
    try:
        ray = None
        if args.executor == "ray":
            from .ray_runner import RayOptions
            ray = RayOptions(args.address, args.cpus_per_task, args.gpus_per_task, args.retries)
        elif args.address:
            raise CifarlabError("--address is for --executor ray; add --executor ray or drop it")
        if args.budget is not None and args.only:
            raise CifarlabError("--budget plans the whole study and --only trains chosen "
                                "variants as they are; drop one of them")
        if args.budget is not None:
            outcome = _budgeted(args, written, given, out)
            failed = outcome.failed
        else:
            failed = run_study(st, out, jobs=args.jobs, ray=ray, only=args.only)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (train.Interrupted carries it)
        print("cifarlab: interrupted; finished runs are kept, so re-run the same command to "
              "train the rest", file=sys.stderr)
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    writing = time.perf_counter()
    results = readback.collect_study(out, equivalence=args.equivalence)
    html_path, md_path = report.write(results, out)
    if outcome is not None:
        from . import study_budget
        study_budget.finish(outcome, time.perf_counter() - writing)
        print(f"\nStudy finished {study_budget.elapsed_text(outcome)}. Report: {html_path} "
              f"and {md_path}")
    else:
        print(f"\nStudy finished in {time.perf_counter() - started:.0f} s. Report: {html_path} "
              f"and {md_path}")
    print(report.terminal_text(results))
    if failed:
        print(f"cifarlab: {len(failed)} run(s) failed: {', '.join(t.key for t in failed)}; "
              "re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


def _budgeted(args, study, given, out: Path):
    """`cifarlab study --budget`: plan for this machine, then train in two rounds."""
    from . import study_budget
    from .config import parse_budget
    parse_budget(args.budget)  # a bad duration is refused before anything is measured
    if args.executor == "ray":
        raise CifarlabError("--budget plans the study for this machine's own jobs; drop "
                            "--executor ray, or drop --budget and give --seeds yourself")
    if args.jobs < 1:
        raise CifarlabError(f"--jobs must be at least 1, got {args.jobs}")
    # Run as a command, the process is the study's: its Python and torch imports count too.
    # Called in a longer-lived process (a notebook, a test), the budget starts now.
    started = study_budget.process_started() if args.own_process else None
    return study_budget.run(study, out, args.budget, args.jobs, given, args.seeds is not None,
                            started=started)


def cmd_report(args) -> int:
    from . import report
    from . import results as readback
    results = readback.collect_study(args.dir, equivalence=args.equivalence)
    html_path, md_path = report.write(results, args.dir)
    print(report.terminal_text(results))
    print(f"\nWrote {html_path} and {md_path}")
    return 0


def cmd_compare(args) -> int:
    from . import report
    from . import results as readback
    results = readback.collect_runs(args.runs)
    results.equivalence = args.equivalence
    print(report.terminal_text(results))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        html_path, md_path = report.write(results, args.out)
        print(f"\nWrote {html_path} and {md_path}")
    return 0


def cmd_predict(args) -> int:
    import json

    from .predict import predict
    results = predict(args.run_dir, args.images, top_k=args.top_k)
    if args.json:
        print(json.dumps([{"file": r.file, "predictions": [
            {"class": c, "probability": round(p, 6)} for c, p in r.top]} for r in results],
            indent=2))
    else:
        width = max(len(r.file) for r in results)
        for r in results:
            print(f"{r.file:<{width}}  " + ", ".join(f"{c} {p:.1%}" for c, p in r.top))
    return 0


def cmd_export(args) -> int:
    from .export import export
    path, diff = export(args.run_dir, args.format, args.out)
    print(f"Wrote {path}; largest difference from PyTorch on a check batch: {diff:.1e}\n"
          "input 'images': float32 N x 3 x 32 x 32, RGB pixel values 0-255; output "
          "'probabilities': float32 N x classes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cifarlab", description="Run, compare and explain CNN experiments on "
                    "CIFAR-10.", epilog="example:\n  cifarlab train --model simple --epochs 10",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"cifarlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def command(name, help_text):
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=EXAMPLES[name],
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    _add_train(command("train", "train one network and write its run folder"))
    p = command("evaluate", "re-create a run's test report and confusion matrix")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", help="data to evaluate on (default: the run's own)")
    p.set_defaults(func=cmd_evaluate)
    command("models", "list the network presets and their parameter counts").set_defaults(
        func=cmd_models)
    _add_study(command("study", "run a whole study (variants x seeds) and write its report"))
    _add_results(command)
    return parser


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML file of settings (flags override it)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<model>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an unfinished run from its last complete epoch")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    _add_force_unlock(p)
    p.add_argument("--track", metavar="KIND", help="also log to tensorboard, mlflow or both "
                   "(comma-separated); needs pip install 'cifarlab[trackers]'")
    p.add_argument("--mlflow-uri", metavar="URI", help="MLflow tracking URI (default "
                   "$MLFLOW_TRACKING_URI, else ./mlruns)")
    p.add_argument("--nproc", type=_typed(int), metavar="N",
                   help="train data-parallel on N processes of this machine (one per GPU on "
                   "CUDA), via torchrun; the batch size stays the global one")
    p.add_argument("--sync-bn", action="store_true",
                   help="synchronise batch norm statistics across the processes (CUDA only)")
    add_setting_flags(p)
    p.set_defaults(func=cmd_train)


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", nargs="?", metavar="FILE_OR_NAME",
                   help="a study TOML file or a built-in study name")
    p.add_argument("--list", action="store_true", help="list the built-in studies")
    p.add_argument("--print", action="store_true", help="print the study as TOML and exit")
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/study-<name>)")
    p.add_argument("--jobs", type=_typed(int), default=1, metavar="N",
                   help="runs trained at once, each with its share of the cores (default 1)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: --jobs processes on this machine (default); ray: one Ray task "
                   "per run on a Ray cluster (pip install 'cifarlab[ray]')")
    p.add_argument("--address", metavar="HOST:PORT", help="Ray cluster to use (default: start "
                   "Ray on this machine)")
    p.add_argument("--cpus-per-task", type=_typed(float), default=1.0, metavar="N",
                   help="Ray: CPUs (and torch threads) per run (default 1)")
    p.add_argument("--gpus-per-task", type=_typed(float), metavar="G",
                   help="Ray: GPUs per run, a fraction packs runs on one GPU (default 1 when "
                   "the cluster has GPUs, else 0)")
    p.add_argument("--retries", type=_typed(int), default=2, metavar="N",
                   help="Ray: attempts again a run whose worker died, up to N times (default 2)")
    p.add_argument("--data", help=HELP["data"])
    p.add_argument("--device", help=HELP["device"])
    p.add_argument("--precision", choices=("auto", "float32", "bf16"),
                   help="every run's precision, recorded with the study so that a resumed "
                        "study never mixes two (default: each run's own, auto)")
    p.add_argument("--seeds", type=_typed(int), metavar="N", help="use N seeds")
    p.add_argument("--budget", metavar="TIME",
                   help="plan the whole study, report included, for TIME on this machine "
                   "(e.g. 45s, 15m, 2h): a probe of each network picks the scale and the "
                   "first round's seeds; the rest of the time buys more seeds for the "
                   "questions they can still decide (--seeds, --fraction, --max-epochs "
                   "given with it are kept)")
    p.add_argument("--only", action="append", metavar="VARIANT",
                   help="train only this variant's runs (repeat for more): to split a study "
                   "between machines or train what one question needs first; the folder and "
                   "the report stay the whole study's")
    p.add_argument("--epochs-scale", type=_typed(float), metavar="X",
                   help="multiply every variant's epochs by X")
    p.add_argument("--fraction", type=_typed(float), default=1.0, metavar="F",
                   help="multiply every variant's training fraction by F")
    p.add_argument("--max-epochs", type=_typed(int), metavar="N", help="cap every run's epochs")
    _add_force_unlock(p)
    _add_equivalence(p)
    p.set_defaults(func=cmd_study)


def _add_results(command) -> None:
    """The commands that read finished runs: report, predict, export, compare."""
    p = command("report", "rebuild a study's report.html and report.md from its run folders")
    p.add_argument("dir", metavar="DIR")
    _add_equivalence(p)
    p.set_defaults(func=cmd_report)

    p = command("predict", "classify your own pictures (any size or format) with a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--top-k", type=_typed(int), default=3, metavar="K",
                   help="how many classes to show per picture (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_predict)

    p = command("export", "export a run's network (normalisation built in) as ONNX or TorchScript")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", required=True, help="onnx or torchscript")
    p.add_argument("--out", metavar="FILE", help="default RUN_DIR/model.onnx or "
                   "RUN_DIR/model.torchscript.pt")
    p.set_defaults(func=cmd_export)

    p = command("compare", "compare run folders (or study folders) with statistics over seeds")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="also write report.html and report.md here")
    _add_equivalence(p)
    p.set_defaults(func=cmd_compare)


def _add_equivalence(p: argparse.ArgumentParser) -> None:
    p.add_argument("--equivalence", type=_delta, metavar="DELTA",
                   help="smallest test-accuracy difference of interest, e.g. 0.01: "
                        "comparisons inside ±DELTA can be shown equivalent (two one-sided tests)")


def _add_force_unlock(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force-unlock", action="store_true",
                   help="take over a lock that another host left on the folder (only when "
                        "that run is really gone)")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own exits included)."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a flag argparse could not parse
        return e.code if isinstance(e.code, int) else 2
    args.argv = argv
    args.own_process = from_command_line
    forced = contextlib.nullcontext()
    if getattr(args, "force_unlock", False):  # for this command and its job processes only
        from .rundir import forcing_unlock
        forced = forcing_unlock()
    try:
        if os.environ.get("CIFARLAB_THREADS"):
            import torch
            torch.set_num_threads(cpu_threads())
        with forced:
            return args.func(args)
    except (CifarlabError, RuntimeError) as e:
        if is_out_of_memory(e):  # e.g. while evaluating, outside a run's own handling
            e = out_of_memory(e)
        elif not isinstance(e, CifarlabError):
            raise
        from . import distributed  # (torch: imported only where a command needs it)
        if not distributed.launched() or distributed.report_error(e):
            print(f"cifarlab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)  # train.Interrupted carries its signal
        if not hasattr(e, "signum"):
            print("cifarlab: interrupted", file=sys.stderr)
        return 128 + int(signum)


if __name__ == "__main__":
    sys.exit(main())
