"""The serving SavedModel: raw features in, the transform graph, the model, one output per task.

`mtlrec export --run RUN [--sparse]` re-exports a trained run; --sparse keeps only the experts
that static gates select (models/sparse.py).

Signatures:
- serving_default(raw columns as 1-D tensors, as the source provides them) -> {task: [B]};
- serve_examples(serialized tf.Examples) -> the same, for TF Serving's Example input.
The transform graph travels inside (tf.Transform's layer tracks its tables and assets), so
`tf.saved_model.load` alone serves it: no import of this project is needed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf

from features.spec import raw_feature_spec
from features.transform import dense_model_inputs
from pipeline import runs
from pipeline.artifacts import write_json
from pipeline.errors import MtlrecError


class ServingModule(tf.Module):
    def __init__(self, model, inputs):
        super().__init__()
        self.model = model
        self.tft_layer = inputs.tft_output.transform_features_layer()
        raw_spec = raw_feature_spec(inputs.raw_columns, with_labels=False)
        signature = {name: tf.TensorSpec([None], spec.dtype, name=name) for name, spec in raw_spec.items()}

        @tf.function(input_signature=[signature])
        def serve(raw):
            outputs = self.model(dense_model_inputs(self.tft_layer(raw)), training=False)
            return {task: tf.cast(value, tf.float32) for task, value in outputs.items()}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(serialized):
            return serve(tf.io.parse_example(serialized, raw_spec))

        self.serve, self.serve_examples = serve, serve_examples


def export_model(model, inputs, path: Path) -> Path:
    """Write the SavedModel to a temporary sibling, then rename it into place."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module = ServingModule(model, inputs)
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve,
                                                      "serve_examples": module.serve_examples})
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


class ExportError(MtlrecError):
    """A run that cannot be exported as asked."""


def export_run(run_dir, sparse: bool = False) -> Path:
    """(Re-)export a trained run: dense to <run>/export, sparse to <run>/export_sparse.

    The sparse export drops every expert that no task's static gate selects and records
    which experts were kept and why in <run>/sparse_export.json.
    """
    from models.sparse import SparseExportError, SparseRecommender
    run_dir = Path(run_dir)
    model, inputs = runs.restore_model(run_dir)
    if not sparse:
        return export_model(model, inputs, run_dir / runs.EXPORT)
    try:
        sparse_model = SparseRecommender(model)
    except SparseExportError as exc:
        raise ExportError(f"{run_dir}: {exc}") from None
    path = export_model(sparse_model, inputs, run_dir / runs.EXPORT_SPARSE)
    write_json(run_dir / runs.SPARSE_EXPORT, {"export": str(path), **sparse_model.selection.to_json()})
    return path


def main(config, args) -> int:
    import sys
    run_dir = Path(args.run) if args.run else runs.run_dir_of(config)
    path = export_run(run_dir, sparse=args.sparse)
    print(f"export: wrote {path}", file=sys.stderr)
    return 0
