"""Time of writing the serving SavedModel, with the Keras model tracked by the export module or not.

Writes bench/results/export.json. `mtlrec train` exports every run (compare and the tests train
many), so the export's time is paid per run. The module exports the model's variables and the
signatures that call the model; it used to hold the Keras model as an attribute as well, which
makes tf.saved_model.save trace every Keras layer's call for Keras's own loader (no signature
uses it). Both are saved alternately in one process, `--rounds` times each, from a model of the
default size (configs/default.yaml) built on a data folder, a new model for every save (as each
run of compare exports its own); the first round is reported apart (the process's first traces)
and the rest as the median. The `rank` outputs of the two kinds are checked equal on one model.

    python -m bench.export [--data runs/default/data] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import models  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from bench.common import describe_data, write


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/default/data", help="a data folder (`mtlrec compare` writes this one)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    from pipeline.config import load_config
    from pipeline.stages import export
    from pipeline.artifacts.manifest import read_training_manifest
    from pipeline.training.dataset import InputPipeline
    from pipeline.training.modeling import build_model
    from bench.serving import rank_requests

    config = load_config(None, [f"train.data={args.data}"])
    manifest = read_training_manifest(Path(args.data), list(config.model.tasks))
    inputs = InputPipeline(args.data, manifest["raw_columns"])
    batch = next(iter(inputs.dataset("validation", 8)))

    def new_model():  # every run exports a model of its own, traced for the first time by its export
        model = build_model(config, manifest, inputs)
        model(batch)
        return model

    class TrackingTheModel(export.ServingModule):  # the module as it was: the Keras model an attribute
        def __init__(self, model, *a):
            super().__init__(model, *a)
            self.model = model

    kinds = {"model_tracked": TrackingTheModel, "variables_only": export.ServingModule}
    seconds = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = list(kinds) if round_ % 2 == 0 else list(kinds)[::-1]  # alternate who goes first
            for kind in order:
                model = new_model()
                module = kinds[kind](model, inputs, export.rank_weights(model, config.export), 10)
                start = time.perf_counter()
                tf.saved_model.save(module, f"{scratch}/{kind}{round_}", signatures=module.signatures())
                seconds[kind].append(time.perf_counter() - start)
        model = new_model()
        for kind, module in kinds.items():
            module = module(model, inputs, export.rank_weights(model, config.export), 10)
            tf.saved_model.save(module, f"{scratch}/{kind}-same", signatures=module.signatures())
        request = rank_requests(args.data)[100]
        outputs = [tf.saved_model.load(f"{scratch}/{kind}-same").signatures["rank"](**request) for kind in kinds]
        for task in outputs[0]:
            np.testing.assert_array_equal(outputs[0][task].numpy(), outputs[1][task].numpy())
        sizes = {kind: sum(f.stat().st_size for f in Path(f"{scratch}/{kind}0").rglob("*") if f.is_file())
                 for kind in kinds}
    figures = {kind: {"first_save_seconds": round(s[0], 3), "median_later_seconds": round(statistics.median(s[1:]), 3),
                      "all_seconds": [round(x, 3) for x in s], "bytes": sizes[kind]} for kind, s in seconds.items()}
    ratio = statistics.median(a / b for a, b in zip(seconds["variables_only"][1:], seconds["model_tracked"][1:]))
    path = write("export", {
        "what": "wall seconds of tf.saved_model.save of the serving module, alternating in one process",
        "command": "python -m bench.export", "data": describe_data(args.data),
        "model": {"num_experts": config.model.num_experts, "expert_units": config.model.expert_units,
                  "gate": config.model.gate.type, "tasks": list(config.model.tasks)},
        "rounds": args.rounds, "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": figures, "variables_only_over_model_tracked": round(ratio, 3), "rank_outputs_equal": True})
    print(f"wrote {path}: variables only / model tracked = {ratio:.2f} (median of later saves)")


if __name__ == "__main__":
    main()
