"""`mtlrec synthetic`: do sparse static gates find the right experts for each task?

The study of Hazimeh et al. (2021) on clustered synthetic tasks: shared stacked experts, one
STATIC gate per task, one tower per task; every gate gets the same tuning budget (Optuna, on
validation MSE), trains until its selection has converged, and we report test MSE and how well
the experts each task selects recover the true clusters, at matched k.

    data.py      the generator: T tasks in C clusters, with the truth to recover (numpy only)
    recovery.py  selected experts and recovery metrics: exact-set and argmax-k ARI, pair agreement (numpy only)
    training.py  the training runs of one setting (one per seed) until converged, scored
    search.py    equal-budget tuning of one variant (pipeline/tuning/studies.py)
    study.py     the protocol: tuning, seeds, task-count sweep, comparisons at matched k
    report.py    summary.json, weights.npz, figures, report.md / report.html

The study's Keras model, TaskRoutedMoE (T static gates packed as one layer, several seeds side by
side), is models/synthetic.py; the command is pipeline/stages/synthetic.py. This package's __init__
imports nothing: data.py and recovery.py stay usable without TensorFlow.
"""
