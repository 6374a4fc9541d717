"""The sequential retrieval model: a ``tfrs.Model`` whose query tower encodes the user's
item sequence, and its two losses.

Regimes: ``all`` (default): a causal encoder and a next-item target at every position
(SASRec); ``last``: one target after the sequence (RecBole's prefix-augmented training;
the encoder may be non-causal). Losses: ``full`` cross-entropy over the whole catalogue
(RecBole's CE) or ``sampled``: ``tfrs.tasks.Retrieval`` (softmax over candidates with
log-Q correction and accidental hits removed) whose candidates are the batch's own
targets (in-batch negatives) plus ``S`` negatives shared by the batch, drawn from a
log-uniform distribution over the popularity-sorted vocabulary ("mixed negative
sampling"). In regime ``all`` the task runs once per position over the ``B`` sequences'
targets at that position, so the logits are ``N`` blocks of ``[B, B + S]`` — never one
``[B·N, B·N]`` matrix. The shared negatives come from the model's own
``tf.random.Generator`` (:attr:`SequentialRetrievalModel.sampler_generator`), whose state
the run's checkpoint holds, so a resumed sampled-loss run draws what the uninterrupted
run draws.

The full loss (:func:`tfrs_linear.ops.catalogue_cross_entropy`) scores only the real
positions (padding targets weigh 0 and are never scored), in chunks of
:func:`tfrs_linear.ops.rows_per_chunk` rows: its float32 logits are at most
``[min(B·positions, chunk), V]`` at a time (``positions``: ``max_len`` in regime ``all``,
1 in ``last``), with their gradient of the same size. :func:`check_full_loss_fits`
(called by the Trainer before anything is written) refuses a configuration whose two
tensors exceed the host memory available when training on CPU, with a one-line error that
names ``--loss sampled``; with chunks of 16 rows from a million items on, that takes a
catalogue of about 10⁸ items on a 24 GB machine.
"""

import os
import random

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_linear.config import ModelConfig
from tfrs_linear.constants import NUM_RESERVED, OOV_INDEX, PAD_INDEX
from tfrs_linear.layers.embedding import TableEmbedding
from tfrs_linear.layers.encoder import SequenceEncoder, embedding_initializer
from tfrs_linear.ops.catalogue_loss import catalogue_cross_entropy, rows_per_chunk

# The logit bias that keeps padding and OOV out of the full softmax.
_NEG = -1e9


def _embedding_table(vocab_size, d_model, name):
    return TableEmbedding(
        vocab_size, d_model, embeddings_initializer=embedding_initializer(), name=name
    )


def log_uniform_probability(ids, range_max):
    """P(k) of a log-uniform (Zipfian) draw of ranks ``k`` in ``[0, range_max)``."""
    k = tf.cast(ids, tf.float32)
    return (tf.math.log(k + 2.0) - tf.math.log(k + 1.0)) / tf.math.log(
        tf.cast(range_max, tf.float32) + 1.0
    )


def sample_log_uniform(num_samples, range_max, seed=None, generator=None):
    """Ranks in ``[0, range_max)`` with P(k) ∝ log((k+2)/(k+1)) — XLA-friendly.

    The vocabulary is sorted by training popularity, so rank sampling approximates
    popularity sampling, as TF's log-uniform candidate sampler does.

    Args:
        num_samples: how many ranks to draw.
        range_max: the number of ranks.
        seed: the op seed of TensorFlow's legacy stateful ``tf.random.uniform`` (used
            when no ``generator`` is given; its state cannot be checkpointed).
        generator: a ``tf.random.Generator`` to draw from (``generator.uniform``): its
            state is a variable, so a checkpoint that holds the generator resumes the
            same stream. The model's sampled loss passes its own
            (:attr:`SequentialRetrievalModel.sampler_generator`). Not with ``seed``.
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("sample_log_uniform takes a seed or a generator, not both")
        u = generator.uniform([num_samples], dtype=tf.float32)
    else:
        u = tf.random.uniform([num_samples], dtype=tf.float32, seed=seed)
    k = tf.floor(tf.exp(u * tf.math.log(tf.cast(range_max, tf.float32) + 1.0))) - 1.0
    return tf.clip_by_value(tf.cast(k, tf.int32), 0, range_max - 1)


def full_loss_rows(config, batch_size, vocab_size):
    """``(rows, rows at a time)`` of the full loss: ``batch_size · positions`` rows
    (``positions``: ``max_len`` in regime ``all``, 1 in regime ``last``), scored at most
    :func:`tfrs_linear.ops.rows_per_chunk` of ``vocab_size`` at a time."""
    positions = config.max_len if config.regime == "all" else 1
    rows = int(batch_size) * int(positions)
    return rows, min(rows, rows_per_chunk(vocab_size))


def full_loss_logits_bytes(config, batch_size, vocab_size):
    """Bytes of the full loss's float32 logits held at a time: ``[rows at a time,
    vocab_size]`` (:func:`full_loss_rows`)."""
    return 4 * full_loss_rows(config, batch_size, vocab_size)[1] * int(vocab_size)


def available_memory_bytes():
    """The host memory available now, in bytes (``psutil`` when installed, else
    ``os.sysconf``), or ``None`` where neither can tell."""
    try:
        import psutil  # optional: the test and bench extras
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def memory_limit_bytes():
    """What the full loss's logits must fit in: the host's available memory
    (:func:`available_memory_bytes`) when training runs on the CPU; ``None`` (no limit
    checked) when a GPU or TPU is visible: the logits live in its memory, whose
    allocator reports a step that does not fit."""
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return None
    return available_memory_bytes()


def _gigabytes(n):
    return f"{n / 1e9:.1f} GB ({n:,} bytes)"


def check_full_loss_fits(config, batch_size, vocab_size, available=None):
    """Refuses (``ValueError``, one line naming ``--loss sampled``) a ``full``-loss
    configuration whose training step cannot hold its logits: one chunk's float32
    logits and their gradient (the softmax, the same size), twice
    :func:`full_loss_logits_bytes`, must fit in ``available`` bytes
    (default: :func:`memory_limit_bytes`, the host's memory available now when training
    on CPU). Does nothing for the sampled loss or where the limit is unknown."""
    if config.loss != "full":
        return
    available = memory_limit_bytes() if available is None else available
    logits = full_loss_logits_bytes(config, batch_size, vocab_size)
    if available is None or 2 * logits <= available:
        return
    rows, at_a_time = full_loss_rows(config, batch_size, vocab_size)
    positions = rows // int(batch_size)
    raise ValueError(
        f"the full loss cannot hold its logits: batch size {batch_size} x {positions} "
        f"positions, scored {at_a_time:,} at a time, x a catalogue of "
        f"{vocab_size - NUM_RESERVED} items ({vocab_size} "
        f"vocabulary ids) is {_gigabytes(logits)} of float32 logits, twice that with their "
        f"gradient, more than the {_gigabytes(available)} of memory available; use "
        "--loss sampled (in-batch and shared log-uniform negatives), or a smaller "
        "--batch-size or --max-len"
    )


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class SequentialRetrievalModel(tfrs.Model):
    """A TFRS retrieval model whose query tower encodes the user's item sequence.

    Query tower: a :class:`~tfrs_linear.layers.SequenceEncoder` (item embedding + learned
    positions + ``num_layers`` blocks) read at the newest position. Candidate tower: the
    item embeddings, tied to the encoder's input embeddings unless
    ``config.tie_embeddings`` is false. The loss (:meth:`compute_loss`) is the
    configuration's: ``full`` or ``sampled``, in regime ``all`` or ``last`` (module
    docstring).

    Inputs are dicts ``{"inputs": int [B, max_len], "targets": int [B, max_len] or [B]}``
    of vocabulary indices (0 = padding, 1 = out of vocabulary, catalogue = 2..V-1).
    ``model(inputs)`` returns the user embeddings ``[B, d]`` (the newest position);
    :meth:`item_embeddings` the candidate tower's ``[V, d]`` table.

    Saving: the package's model directory (:func:`~tfrs_linear.models.save_model_dir`)
    is what ``tfrs-linear`` reads. The model also round-trips through Keras:
    ``model.save(path)`` then ``tf.keras.models.load_model(path)`` gives a
    ``SequentialRetrievalModel`` with the same scores, for a SavedModel directory and for
    a ``.keras`` file alike (:meth:`get_config` holds the configuration and the
    vocabulary size; loading builds every variable before restoring them).

    Args:
        config: the :class:`~tfrs_linear.config.ModelConfig`; the model keeps its
            resolved form as ``model.config``.
        vocab_size: the vocabulary size ``V`` (padding, OOV and at least one item).
        sampler_seed: the seed of :attr:`sampler_generator` (the sampled loss's
            negatives); ``None``: drawn from Python's ``random`` (reproducible after
            ``tf.keras.utils.set_random_seed``). The Trainer passes the run's seed.
        **kwargs: ``tfrs.Model`` arguments.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, sampler_seed=None, **kwargs):
        super().__init__(**kwargs)
        config = config.resolved()  # replace() validates
        if vocab_size < NUM_RESERVED + 1:
            raise ValueError(f"vocab_size must be >= 3 (padding, OOV and an item), got {vocab_size}.")
        self.config = config
        self.vocab_size = int(vocab_size)
        # Attribute names are the checkpoints' keys; the item embedding comes first.
        self.item_embedding = _embedding_table(self.vocab_size, config.d_model, "item_embedding")
        self.encoder = SequenceEncoder(
            vocab_size=self.vocab_size,
            item_embedding=self.item_embedding,
            name="encoder",
            **config.encoder_kwargs(),
        )
        self.candidate_embedding = (
            self.item_embedding
            if config.tie_embeddings
            else _embedding_table(self.vocab_size, config.d_model, "candidate_embedding")
        )
        # The sampled loss (see _sampled_loss); no metrics: evaluation is the full ranking
        # of tfrs_linear.evaluation, exact and batched.
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True, name="retrieval")
        # Pad and OOV never compete as candidates.
        bias = np.zeros([self.vocab_size], np.float32)
        bias[[PAD_INDEX, OOV_INDEX]] = _NEG
        self._candidate_bias = tf.constant(bias)
        self._make_sampler_generator(sampler_seed)
        self.targets_per_row = None

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _make_sampler_generator(self, seed):
        # Not a checkpoint dependency of the model, like Keras' Dropout generators: the
        # weights files and model.weights stay those of a model without it; the run's
        # checkpoint holds it (training.model_scope.random_generators).
        self._sampler_generator = None
        if self.config.loss == "sampled":
            seed = random.randint(1, 10**9) if seed is None else int(seed)
            with tf.init_scope():
                self._sampler_generator = tf.random.Generator.from_seed(seed)

    @property
    def sampler_generator(self):
        """The ``tf.random.Generator`` the sampled loss draws its negatives from
        (``None`` for the full loss). Its state is a variable: a checkpoint that holds it
        (the Trainer's does) resumes the same negatives. It is not part of the model's
        weights (``model.weights``, ``save_weights``)."""
        return self._sampler_generator

    # -- Keras serialization -----------------------------------------------------------
    def get_config(self):
        """``{"config": the ModelConfig's fields, "vocab_size": V}``."""
        return {"config": self.config.to_dict(), "vocab_size": self.vocab_size}

    @classmethod
    def from_config(cls, config):
        return cls(ModelConfig(**config["config"]), config["vocab_size"])

    def get_build_config(self):
        # Every variable comes from build_all(): the loader of a .keras file calls
        # build_from_config with this before restoring the weights.
        return {"build_all": True}

    def build_from_config(self, config):
        self.build_all()

    def build(self, input_shape=None):
        """Creates every variable (:meth:`build_all`); what a SavedModel loader calls."""
        self.build_all()
        tf.keras.layers.Layer.build(self, input_shape)

    # -- towers ---------------------------------------------------------------------
    def build_all(self):
        """Creates every variable (for restoring weights or exporting)."""
        self.encode(tf.zeros([1, self.config.max_len], tf.int32))
        self.item_embeddings()
        self.task.build(None)  # no variables; built, so that saving does not skip it
        self.built = True
        return self

    def encode(self, item_ids, training=False, last_only=True, offsets=None):
        """User embeddings ``[B, d]`` (float32) from left-padded item ids ``[B, max_len]``.

        The last block computes the newest position only; ``last_only=False`` computes
        every position and slices (the same values; kept for comparisons). ``offsets``
        (int ``[B]``, optional): the events of each user before the row's first item,
        used by ``positions="from_start"`` (the ``"offsets"`` of the data pipelines).
        """
        sequence = self.encoder(item_ids, training=training, last_only=last_only,
                                position_offsets=offsets)
        return tf.cast(sequence[:, -1, :], tf.float32)

    def position_offsets(self, inputs):
        """The ``"offsets"`` of a batch dict when the positions need them
        (``positions="from_start"``), else None."""
        if self.config.positions != "from_start" or not isinstance(inputs, dict):
            return None
        return inputs.get("offsets")

    # -- streaming (docs/streaming.md) -----------------------------------------------
    def initial_state(self, batch):
        """The streaming state of ``batch`` users with no event
        (:meth:`SequenceEncoder.initial_state`); a streamable configuration only
        (``config.is_streamable``), else a ``ValueError`` saying why."""
        return self.encoder.initial_state(batch)

    def encode_state(self, item_ids, events_per_step=None, padding="left"):
        """``(state, user_embedding [B, d] float32)`` after whole histories ``[B, L]``
        (indices padded on the ``padding`` side, any length;
        :meth:`SequenceEncoder.encode_state`)."""
        return self.encoder.encode_state(item_ids, events_per_step, padding)

    def step(self, state, new_ids):
        """``(state, user_embedding)`` after ``m`` new events per user (``[B, m]``,
        right-padded indices; :meth:`SequenceEncoder.step`)."""
        return self.encoder.step(state, new_ids)

    def item_embeddings(self):
        """The candidate tower: ``[V, d]`` float32, row i = vocabulary index i."""
        if not self.candidate_embedding.built:
            self.candidate_embedding(tf.zeros([1], tf.int32))
        return tf.cast(self.candidate_embedding.embeddings, tf.float32)

    def call(self, inputs, training=False):
        offsets = self.position_offsets(inputs)
        if isinstance(inputs, dict):
            inputs = inputs["inputs"]
        return self.encode(inputs, training=training, offsets=offsets)

    # -- loss -----------------------------------------------------------------------
    def compute_loss(self, inputs, training=False):
        """The configured loss (``full`` or ``sampled``), averaged over the batch's real
        targets (a padding/OOV target weighs 0); or, when :attr:`targets_per_row` is set
        (a float), summed and divided by ``rows × targets_per_row``.

        The second form is for batches whose rows were grouped by length
        (:func:`tfrs_linear.data.length_bucketed`; the Trainer sets it to
        :func:`tfrs_linear.data.targets_per_example` then): a batch of short rows holds
        few targets, and dividing by its own count would weigh each of them several
        times more than a target of a batch of long rows. With one constant the epoch's
        objective is the same as with shuffled batches: every target weighs the same."""
        item_ids = inputs["inputs"]
        targets = tf.cast(inputs["targets"], tf.int32)
        # Regime "last" needs the newest position only: the last block runs one query.
        last_only = self.config.regime != "all"
        sequence = tf.cast(
            self.encoder(item_ids, training=training, last_only=last_only,
                         position_offsets=self.position_offsets(inputs)), tf.float32
        )
        weights = tf.cast(targets > OOV_INDEX, tf.float32)
        if self.targets_per_row is None:
            denominator = tf.maximum(tf.reduce_sum(weights), 1.0)
        else:  # the same weight for every target of the epoch, whatever its batch
            denominator = tf.cast(tf.shape(targets)[0], tf.float32) * self.targets_per_row
        if self.config.loss == "sampled":
            queries = sequence if self.config.regime == "all" else sequence[:, -1, :]
            return self._sampled_loss(queries, targets, weights) / denominator
        if self.config.regime == "all":
            queries = tf.reshape(sequence, [-1, self.config.d_model])
            targets = tf.reshape(targets, [-1])
            weights = tf.reshape(weights, [-1])
        else:
            queries = sequence[:, -1, :]
        # Only the real positions are scored, a chunk of rows at a time (module docstring).
        return catalogue_cross_entropy(queries, self.item_embeddings(), targets, weights,
                                       bias=self._candidate_bias) / denominator

    def _sampled_loss(self, queries, targets, weights):
        """Sum of the weighted sampled-softmax losses, via ``tfrs.tasks.Retrieval``.

        ``queries [B, d]`` with ``targets``/``weights [B]`` (regime ``last``: one block), or
        ``[B, N, d]`` with ``[B, N]`` (regime ``all``: one block per position, run with
        ``tf.map_fn`` so the graph does not grow with ``N``). In a block the candidates are
        the block's targets (row ``i``'s positive is column ``i``; the others are in-batch
        negatives) followed by the ``S`` shared log-uniform negatives. Log-Q correction
        (the task's ``candidate_sampling_probability``): every candidate column, in-batch
        or sampled, is corrected by the log-uniform probability of its rank. Both kinds of
        draw follow the same popularity-ranked (Zipf-like) distribution, so one proposal
        serves both. The probabilities are divided by the rank-0 probability (a constant
        factor, which the softmax ignores) so that TFRS's clip to ``[1e-6, 1]`` only bites
        for catalogues above ~1.4 M items. Accidental hits (a candidate with the row's
        target id in another column) are removed by the task; padding/OOV candidates
        never compete (``score_mask``); rows with a padding/OOV target weigh 0.
        """
        table = self.item_embeddings()
        catalogue = self.vocab_size - NUM_RESERVED
        num = min(self.config.num_negatives, catalogue)
        # Shared by the batch, drawn from the model's checkpointable generator.
        negatives = sample_log_uniform(num, catalogue, generator=self.sampler_generator)
        negatives = negatives + NUM_RESERVED
        negative_embeddings = tf.gather(table, negatives)
        top = log_uniform_probability(0, catalogue)

        def block(args):
            q, t, w, positives = args
            ids = tf.concat([t, negatives], axis=0)
            candidates = tf.concat([positives, negative_embeddings], axis=0)
            probability = log_uniform_probability(tf.maximum(ids - NUM_RESERVED, 0), catalogue) / top
            real = tf.broadcast_to(ids[tf.newaxis, :] > OOV_INDEX, [tf.shape(q)[0], tf.shape(ids)[0]])
            return self.task(
                q,
                candidates,
                sample_weight=w,
                candidate_sampling_probability=probability,
                candidate_ids=ids,
                compute_metrics=False,
                compute_batch_metrics=False,
                score_mask=real,
            )

        # The targets' rows are gathered here, outside the loop: a gather of the captured
        # table inside tf.map_fn would make the table's gradient a dense [V, d] sum per
        # position (hours per epoch at a million items); out here it stays IndexedSlices.
        positives = tf.gather(table, targets)
        if queries.shape.rank == 2:
            return block((queries, targets, weights, positives))
        per_position = tf.map_fn(
            block,
            (tf.transpose(queries, [1, 0, 2]), tf.transpose(targets), tf.transpose(weights),
             tf.transpose(positives, [1, 0, 2])),
            fn_output_signature=tf.TensorSpec([], tf.float32),
        )
        return tf.reduce_sum(per_position)


__all__ = ["SequentialRetrievalModel", "log_uniform_probability", "sample_log_uniform",
           "full_loss_rows", "full_loss_logits_bytes", "available_memory_bytes",
           "memory_limit_bytes", "check_full_loss_fits"]
