"""One entry point for every data source: :func:`load_dataset`.

It sits above the readers, the preprocessed-directory reader and the synthetic
generator (each of which knows nothing of the others), so the modules of
``tfrs_linear.data`` import each other in one direction only.
"""

from tfrs_linear.data import synthetic
from tfrs_linear.data.preprocessed import is_preprocessed_dir, load_preprocessed
from tfrs_linear.data.readers import PREPROCESSED, load_interactions
from tfrs_linear.data.sequences import build_sequences
from tfrs_linear.data.sharded import ShardedSequences


def load_dataset(path=None, format="auto", seed=0, min_events=3, keep_duplicates=False,
                 stream=False):
    """Loads a file (or, with ``path=None``, the embedded synthetic data) as :class:`SequenceData`.

    Args:
      path: an interaction file (:mod:`tfrs_linear.data.readers`), a directory written by
        ``pipelines/preprocess.py``, or None for the synthetic data
        (:func:`tfrs_linear.data.synthetic.generate`).
      format: one of ``tfrs_linear.data.FORMATS``; ``"auto"`` guesses (a directory
        holding ``metadata.json`` is a preprocessed one).
      seed: the synthetic data's seed (ignored for a path).
      min_events: users with fewer events are dropped (at least 3); for a preprocessed
        directory it must equal the pipeline's.
      keep_duplicates: keep exact duplicate events (same user, item and timestamp) instead
        of dropping them (counted in ``dropped_duplicates``); for a preprocessed directory
        it must equal the pipeline's (``--keep-duplicates``).
      stream: for a preprocessed directory, return a
        :class:`~tfrs_linear.data.ShardedSequences` that streams the shards (training and
        evaluation without holding the sequences in memory; ``tfrs-linear train`` does)
        instead of loading them. Ignored for files and the synthetic data.

    Returns:
      :class:`tfrs_linear.data.SequenceData` (or ``ShardedSequences``, see ``stream``),
      with the same counts either way.
    """
    if path is None:
        interactions = synthetic.generate(seed=seed)
    elif format == PREPROCESSED or (format == "auto" and is_preprocessed_dir(path)):
        if stream:
            return ShardedSequences(path, min_events=min_events, keep_duplicates=keep_duplicates)
        return load_preprocessed(path, min_events=min_events, keep_duplicates=keep_duplicates)
    else:
        interactions = load_interactions(path, format=format)
    return build_sequences(interactions, min_events=min_events, keep_duplicates=keep_duplicates)
