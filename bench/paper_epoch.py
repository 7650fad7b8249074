"""One epoch of the paper's MovieLens protocol at the paper's model size: examples/s and s/epoch.

Writes bench/results/paper_epoch.json (configs/movielens_1m_paper.yaml: 128-d user and movie
embeddings, 16 experts of Dense 256 with dropout 0.5, towers of 256, batch 512, per-example gates).

Method: timed steps, extrapolated to ml-1m's full size (not a full epoch; the same model step
costs the same on a smaller table of examples):
  1. generate an ml-1m-layout folder (ratings.dat, movies.dat, users.dat) with ml-1m's 6,040 users
     and 3,706 movies, every movie rated, --per-user ratings per user, so the vocabularies and the
     embedding tables (which Adam updates densely) have ml-1m's size;
  2. preprocess it with the paper config (random split stratified on watch, 1 negative per rating);
  3. per gate (softmax, Top-k, DSelect-k, all per-example k = 2), time --steps train steps and
     --steps validation batches (the test step fit runs after each epoch), round-robin over
     --rounds rounds (bench/README.md: ratios on a shared machine need side-by-side timing);
  4. seconds per epoch = ml-1m's train examples / train examples/s + its validation examples /
     validation examples/s, with ml-1m's sizes under this protocol: 1,000,209 ratings + as many
     negatives, split 78.75 / 11.25 / 10 %. Gate diagnostics and the checkpoint written after
     each epoch are left out (well under a second on this data).

    python -m bench.paper_epoch [--per-user 25] [--steps 20] [--rounds 8] [--scratch DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import models  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from bench.common import write
from bench.train import cached_batches, make_runner

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "movielens_1m_paper.yaml"
ML1M = {"users": 6_040, "movies": 3_706, "max_movie_id": 3_952, "ratings": 1_000_209}
VARIANTS = {"softmax": ["model.gate={type: softmax, per_example: true}"],
            "topk": ["model.gate={type: topk, k: 2, per_example: true, noise: false}"],
            "dselect_k": ["model.gate={type: dselect_k, k: 2, per_example: true, gamma: 1.0, entropy_weight: 1.0}"]}


def ml1m_sizes(negatives_per_rating: int = 1, test: float = 0.1, validation: float = 0.1125) -> dict:
    """Examples per split of ml-1m under the paper protocol (per stratum rounding, as the split does)."""
    strata = [ML1M["ratings"], ML1M["ratings"] * negatives_per_rating]
    out = {"test": sum(round(test * n) for n in strata), "validation": sum(round(validation * n) for n in strata)}
    out["train"] = sum(strata) - out["test"] - out["validation"]
    return out


def generate_ml1m_shape(folder: Path, per_user: int, seed: int = 0) -> Path:
    """An ml-1m-layout folder with ml-1m's users and movies and `per_user` ratings each."""
    rng = np.random.default_rng(seed)
    movie_ids = np.sort(rng.choice(np.arange(1, ML1M["max_movie_id"] + 1), ML1M["movies"], replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for user in range(1, ML1M["users"] + 1):
        # Movie (user * per_user + j) mod #movies first, so every movie gets rated, then distinct.
        picked = movie_ids[(np.arange(per_user) + (user - 1) * per_user) % ML1M["movies"]]
        start = 956_703_932 + int(rng.integers(0, 90 * 86_400))
        stars = rng.integers(1, 6, per_user)
        lines += [f"{user}::{m}::{r}::{start + 60 * j}" for j, (m, r) in enumerate(zip(picked, stars))]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    genres = ["Action", "Comedy", "Drama", "Thriller", "Romance"]
    (folder / "movies.dat").write_bytes("\n".join(
        f"{m}::Movie {m} ({1919 + m % 81})::{genres[m % 5]}|{genres[(m + 2) % 5]}"
        for m in movie_ids).encode("latin-1"))
    (folder / "users.dat").write_text("\n".join(
        f"{u}::{'MF'[u % 2]}::{[1, 18, 25, 35, 45, 50, 56][u % 7]}::{u % 21}::{10000 + u}"
        for u in range(1, ML1M["users"] + 1)) + "\n")
    return folder


def make_evaluator(config, manifest, inputs, batches):
    """n -> run n validation (test-step) batches of a freshly built model."""
    from models.recommender import MultiTaskRecommender
    from pipeline.training.modeling import model_spec
    from pipeline.stages.train import make_optimizer
    model = MultiTaskRecommender(model_spec(config, manifest, inputs.tft_output))
    model.compile(optimizer=make_optimizer(config.train, 100))
    step = model.make_test_function()

    def run(n):
        for _ in range(n):
            step(batches)
    run(3)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-user", type=int, default=25, help="ratings per user of the generated folder")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per runner per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--scratch", default=None, help="folder for the generated data (default: a temporary one)")
    args = parser.parse_args()
    load_start = os.getloadavg()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="mtlrec_paper_epoch_"))

    from pipeline.stages import preprocess
    from pipeline.config import load_config
    from pipeline.training.dataset import InputPipeline
    from pipeline.artifacts.manifest import read_training_manifest
    folder = generate_ml1m_shape(scratch / "ml-1m", args.per_user)
    data = scratch / "data"
    sets = [f"data.path={folder}", f"data.output={data}", "data.candidates.negatives=10", f"train.data={data}"]
    if not (data / "manifest.json").exists():
        started = time.perf_counter()
        preprocess.run(load_config(PAPER, sets))
        print(f"preprocessed {folder} in {time.perf_counter() - started:.0f} s")
    base = load_config(PAPER, sets)
    batch = base.train.batch_size
    manifest = read_training_manifest(str(data), list(base.model.tasks))
    inputs = InputPipeline(str(data), manifest["raw_columns"])
    _, train_it = cached_batches(inputs, batch)
    validation = iter(inputs.dataset("validation", batch, drop_remainder=True, cache=True).repeat())

    runners = {}
    for variant, overrides in VARIANTS.items():
        config = load_config(PAPER, [*sets, *overrides])
        runners[variant, "train"] = make_runner(config, manifest, inputs, train_it, False)
        runners[variant, "validation"] = make_evaluator(config, manifest, inputs, validation)
    rates = {key: [] for key in runners}
    keys = list(runners)
    for r in range(args.rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            runners[key](args.steps)
            rates[key].append(args.steps * batch / (time.perf_counter() - start))

    sizes = ml1m_sizes()
    median = {key: statistics.median(r) for key, r in rates.items()}
    per_variant = {}
    for variant in VARIANTS:
        train_rate, val_rate = median[variant, "train"], median[variant, "validation"]
        seconds = sizes["train"] / train_rate + sizes["validation"] / val_rate
        per_variant[variant] = {"train_examples_per_second": round(train_rate),
                                "validation_examples_per_second": round(val_rate),
                                "seconds_per_epoch": round(seconds, 1), "minutes_per_epoch": round(seconds / 60, 2),
                                "train_rounds_examples_per_second": [round(x) for x in rates[variant, "train"]]}
        print(f"{variant:10s} train {train_rate:8.0f} ex/s, validation {val_rate:8.0f} ex/s -> "
              f"{seconds:6.0f} s per ml-1m epoch ({seconds / 60:.1f} min)")
    result = {
        "what": ("Paper-size model (configs/movielens_1m_paper.yaml), batch 512, graph mode, per-example gates k=2. "
                 "Timed: train steps on cached batches (what fit reads from epoch 2 on) and validation test steps, "
                 "round-robin; examples/s = median over rounds. Extrapolated, not run: seconds per epoch = ml-1m "
                 "train examples / train rate + ml-1m validation examples / validation rate (gate diagnostics and "
                 "checkpointing left out). GPU: not measured (no GPU on this machine)."),
        "settings": {"per_user": args.per_user, "steps": args.steps, "rounds": args.rounds, "batch": batch,
                     "generated": {"users": ML1M["users"], "movies": ML1M["movies"],
                                   "ratings": ML1M["users"] * args.per_user},
                     "data": {"users": manifest["users"], "items": manifest["items"]},
                     "generated_train_examples": manifest["splits"]["train"]["examples"]},
        "ml1m_examples_per_split": sizes,
        "load_average_1min": {"start": load_start[0], "end": os.getloadavg()[0]},
        "variants": per_variant,
        "gpu": "not measured",
    }
    print(f"wrote {write('paper_epoch', result)}")
    if not args.scratch:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
