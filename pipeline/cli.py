"""`mtlrec`: one entry point, one subcommand per stage.

Every subcommand takes `--config FILE.yaml` and repeated `--set key=value` over the defaults,
which live in code (pipeline/config/schema.py; `mtlrec config` prints them resolved). Stage modules
are imported only when their subcommand runs, so `--help`, `mtlrec config` and config errors
stay instant (TensorFlow takes seconds to import). The terminal shows each stage's own lines;
`--verbose` adds the libraries' logs (pipeline/terminal.py).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import terminal
from pipeline.config import ConfigError, load_config, to_yaml
from pipeline.errors import MtlrecError, classify

if TYPE_CHECKING:  # names in annotations only
    from pipeline.config.schema import Config


def _stage(module: str, function: str = "main"):
    """Runner that imports the stage module only when its subcommand runs."""
    def run(config, args):
        return getattr(importlib.import_module(module), function)(config, args)
    return run


def print_config(config: Config, args: argparse.Namespace) -> int:
    """The resolved config; with --dataset, the resolved declaration of the dataset it reads
    (every default spelled out), which loads back as a declaration file (data.dataset)."""
    if getattr(args, "dataset", False):
        from features.datasets import dataset_of_data
        from features.declaration import to_yaml as declaration_yaml
        dataset = dataset_of_data(config.data)
        sys.stdout.write(f"# the declaration of dataset {dataset.name} ({dataset.path}), resolved\n")
        sys.stdout.write(declaration_yaml(dataset))
        return 0
    sys.stdout.write(to_yaml(config))
    return 0


def version() -> str:
    """The installed package's version; from a checkout that is not installed, pyproject.toml's."""
    try:
        return importlib.metadata.version("mtlrec")
    except importlib.metadata.PackageNotFoundError:
        metadata = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        return re.search(r'^version = "([^"]+)"$', metadata, re.M).group(1)  # [project]'s: the first one


# name -> (help, runner). Runners take (config, parsed args) and return an exit code.
COMMANDS = {
    "preprocess": ("Beam + tf.Transform: source data -> TFRecords, transform graph, manifest "
                   "(Beam pipeline options go after --)", _stage("pipeline.stages.preprocess")),
    "tune": ("equal-budget Optuna tuning of every compare variant on validation loss; writes "
             "<workdir>/tune/best.yaml for `compare --config` (resumes when started again)",
             _stage("pipeline.stages.tune")),
    "train": ("train one multi-task model (TFRS, tf.distribute) on preprocessed data; "
              "a killed run resumes when started again", _stage("pipeline.stages.train")),
    "evaluate": ("score the fixed candidate lists with a run's exported model; writes eval.json",
                 _stage("pipeline.stages.evaluate")),
    "compare": ("the main job: preprocess, train and evaluate every gate x seed, then report",
                _stage("pipeline.stages.compare")),
    "export": ("(re-)export a trained run as a SavedModel; --sparse computes only the experts static gates "
               "select", _stage("pipeline.stages.export")),
    "synthetic": ("the synthetic expert-selection benchmark (the paper's study)",
                  _stage("pipeline.stages.synthetic")),
    "config": ("print the resolved config (defaults <- --config file <- --set) as YAML; "
               "it loads back with --config", print_config),
}


EXTRA_ARGUMENTS = {
    "export": [(("--run",), {"metavar": "RUN_DIR", "help": "a trained run folder (default: train.run_dir)"}),
               (("--sparse",), {"action": "store_true", "help": "drop experts no task selects (static gates only)"})],
    "evaluate": [(("--run",), {"metavar": "RUN_DIR", "help": "a trained run folder (default: train.run_dir)"})],
    "synthetic": [(("--output",), {"metavar": "DIR", "help": "result folder (default: <workdir>/synthetic)"})],
    "config": [(("--dataset",), {"action": "store_true",
                                 "help": "print the resolved declaration of the dataset the config reads "
                                         "(data.dataset, or data.source's built-in) instead"})],
    "preprocess": [(("--output",), {"metavar": "DIR", "help": "data folder (default: data.output or <workdir>/data)"})],
    "compare": [(("--force",), {"action": "store_true",
                                "help": "replace run folders and the data folder made with other settings "
                                        "(without it they are kept and compare stops)"})],
    "tune": [(("--force",), {"action": "store_true",
                             "help": "preprocess again into a data folder made with other settings "
                                     "(without it tune stops)"})],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlrec",
        description="Multi-task recommender pipeline with DSelect-k, Top-k and softmax (MMoE) gates.")
    parser.add_argument("--version", action="version", version=f"mtlrec {version()}")
    verbose_help = "show the libraries' logs too (TensorFlow, tf.Transform, Beam), for debugging"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, _) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", metavar="FILE.yaml",
                         help="YAML file of settings; the others keep their defaults (`mtlrec config` prints all)")
        cmd.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                         help="override one config key, e.g. --set model.gate.k=2 (repeatable)")
        # Also after the subcommand; SUPPRESS keeps a -v given before it.
        cmd.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
        for flags, kwargs in EXTRA_ARGUMENTS.get(name, []):
            cmd.add_argument(*flags, **kwargs)
    return parser


def exit_on_interrupt(command: str) -> None:
    """Ctrl-C (SIGINT) or SIGTERM ends the process at once, with one line.

    A Python signal handler runs only when the main thread gets back to Python code: inside a long
    TensorFlow or Beam call it waits, and code that catches exceptions broadly can swallow the
    KeyboardInterrupt. `signal.set_wakeup_fd` instead writes the signal to a pipe from the C-level
    handler, at once; a watcher thread reads it and exits. Stopping anywhere is safe: every stage
    writes its artifacts atomically, and a killed stage resumes when the same command runs again.
    """
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    terminal_fd = os.dup(2)  # the terminal itself, even while fd 2 is filtered (terminal.import_tensorflow)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)  # a Python handler must be set for the wakeup fd to be used
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch():
        while (signum := os.read(read_end, 1)[0]) not in (signal.SIGINT, signal.SIGTERM):
            pass  # another signal some library handles in Python: not ours
        sys.stderr.flush()
        os.write(terminal_fd, f"mtlrec {command}: interrupted; rerun the same command to resume\n".encode())
        os._exit(128 + signum)

    threading.Thread(target=watch, name="mtlrec-interrupt", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    console = argv is None  # the `mtlrec` script, not a call from Python (tests, notebooks)
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after a bare `--` is passed through to Beam as pipeline options.
    beam_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.beam_args = beam_args
    terminal.configure(args.verbose)
    if console:
        exit_on_interrupt(args.command)
    try:
        config = load_config(args.config, args.set)
        if args.command != "config":
            terminal.import_tensorflow()  # every other stage needs it; its start-up lines filtered
        return COMMANDS[args.command][1](config, args) or 0
    except ConfigError as exc:
        print(f"mtlrec {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except MtlrecError as exc:
        print(f"mtlrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # only failures of storage, network, cluster and system are mapped; others re-raised
        failure = classify(exc)
        if failure is None:
            raise  # a bug: keep its traceback
        print(f"mtlrec {args.command}: {failure.category}: {failure}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
