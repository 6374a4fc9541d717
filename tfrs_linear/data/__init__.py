"""Interaction files, per-user sequences, the item vocabulary and the tf.data pipelines.

Everything here follows the evaluation protocol (``docs/protocol.md``). One module per
concept, imported in one direction (no module imports one above it):

``readers``
    The interaction file formats, the format guess, :class:`DataError` (messages name the
    file and the 1-based line), :class:`Interactions`, :func:`load_interactions`,
    :func:`parse_interactions`.
``vocabulary``
    Raw id <-> index (:func:`vocabulary_lookup`, :func:`encode_items`) and the
    ``vocab.txt`` format (:func:`save_vocabulary`, :func:`load_vocabulary`).
``sequences``
    :class:`SequenceData` (per-user sequences, leave-one-out splits, the data summary and
    its repeated-target warning) and :func:`build_sequences` (exact duplicates, sorting,
    dropping short users, the vocabulary order).
``preprocessed``
    :func:`load_preprocessed`: the output directory of ``pipelines/preprocess.py`` (Beam +
    tf.Transform), read into the same :class:`SequenceData`.
``sharded``
    :class:`ShardedSequences`: a preprocessed directory streamed from its shards
    (training and evaluation without holding the sequences in memory).
``synthetic``
    :func:`synthetic.generate`: the embedded synthetic data set (needs only ``readers``).
``loading``
    :func:`load_dataset`: a file, a preprocessed directory, or the synthetic data.
``datasets``
    The tf.data pipelines (:func:`training_dataset`, :func:`evaluation_batches`) and
    :func:`pad_left`.
``buckets``
    :func:`length_bucketed`: each training batch cut to the narrowest of a few widths
    (:func:`bucket_widths`), optionally regrouped by length first, so that a step
    computes less padding.

A new file format goes into ``readers`` (a ``_read_*`` function, its name in
``FILE_FORMATS``, a rule in :func:`guess_format`); everything after parsing is shared.
Every name below is importable from ``tfrs_linear.data`` as before the split; the
reserved ids and the option lists come from ``tfrs_linear.constants``.
"""

from tfrs_linear.constants import NUM_RESERVED, OOV, OOV_INDEX, PAD, PAD_INDEX, REGIMES, SPLITS
from tfrs_linear.data import synthetic
from tfrs_linear.data.buckets import bucket_widths, length_bucketed
from tfrs_linear.data.datasets import (
    evaluation_batches,
    num_training_examples,
    pad_left,
    targets_per_example,
    training_dataset,
    training_examples,
)
from tfrs_linear.data.loading import load_dataset
from tfrs_linear.data.preprocessed import (
    ITEMS_FEATURE,
    METADATA_FILE,
    POPULARITY_FILE,
    PREPROCESSED_KIND,
    PREPROCESSED_VERSION,
    RAW_ITEMS_FEATURE,
    USER_FEATURE,
    VOCAB_FILE,
    is_preprocessed_dir,
    load_preprocessed,
    read_preprocessed_metadata,
)
from tfrs_linear.data.readers import (
    FILE_FORMATS,
    FORMATS,
    PREPROCESSED,
    DataError,
    Interactions,
    guess_format,
    load_interactions,
    parse_interactions,
)
from tfrs_linear.data.sequences import SequenceData, build_sequences
from tfrs_linear.data.sharded import ShardedSequences
from tfrs_linear.data.vocabulary import (
    encode_items,
    load_vocabulary,
    save_vocabulary,
    vocabulary_lookup,
    vocabulary_text,
)

__all__ = [
    # constants
    "PREPROCESSED", "FILE_FORMATS", "FORMATS", "REGIMES", "SPLITS",
    "PAD", "OOV", "PAD_INDEX", "OOV_INDEX", "NUM_RESERVED",
    # readers
    "DataError", "Interactions", "guess_format", "load_interactions", "parse_interactions",
    # vocabulary
    "vocabulary_lookup", "encode_items", "vocabulary_text", "save_vocabulary", "load_vocabulary",
    # sequences and loading
    "SequenceData", "build_sequences", "load_dataset",
    # preprocessed directories
    "PREPROCESSED_KIND", "PREPROCESSED_VERSION", "METADATA_FILE", "VOCAB_FILE",
    "POPULARITY_FILE", "USER_FEATURE", "ITEMS_FEATURE", "RAW_ITEMS_FEATURE",
    "is_preprocessed_dir", "read_preprocessed_metadata", "load_preprocessed",
    "ShardedSequences",
    # tf.data
    "pad_left", "training_examples", "num_training_examples", "training_dataset",
    "evaluation_batches", "targets_per_example", "bucket_widths", "length_bucketed",
    # the synthetic data set
    "synthetic",
]
