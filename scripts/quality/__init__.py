"""The quality bar of issue #4 on MovieLens-100K, split by concept for
``scripts/quality_ml100k.py`` (the entry point: its docstring documents the usage).

- :mod:`quality.common`: the anchors, the attentions compared, the seeds, the file names.
- :mod:`quality.naming`: a run's configuration, its overrides and the names they give.
- :mod:`quality.flags`: the values of ``--set`` and ``--stop-starting-at``.
- :mod:`quality.runs`: training the runs and recording each (TensorFlow).
- :mod:`quality.throughput`: the training throughput measurement (TensorFlow, imported lazily).
- :mod:`quality.summary`: means over seeds, the issue's checks, the pairs with softmax.
- :mod:`quality.report`: ``results.md`` and the console summary.
- :mod:`quality.precision`: ``precision.md``, the paired precision runs.
- :mod:`quality.plots`: validation NDCG@10 against training seconds.
- :mod:`quality.outputs`: writing ``results.json`` and everything drawn from it.
"""
