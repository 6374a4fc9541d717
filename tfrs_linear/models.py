"""TFRS retrieval models over users' item sequences.

* :class:`SequenceEncoder` — item embedding + learned positions, ``num_layers``
  :class:`~tfrs_linear.layers.TransformerBlock` s whose attention is
  ``"softmax" | "linrec" | "elastic"``. Sequences are left-padded to a fixed ``max_len``
  (newest item last), so every shape is static and XLA compiles one program.
* :class:`SequentialRetrievalModel` — a ``tfrs.Model``: query tower = the encoder,
  candidate tower = the item embeddings (tied to the input embeddings by default).

Regimes: ``all`` (default): a causal encoder and a next-item target at every position
(SASRec); ``last``: one target after the sequence (RecBole's prefix-augmented training;
the encoder may be non-causal). Losses: ``full`` cross-entropy over the whole catalogue
(RecBole's CE) or ``sampled``: ``tfrs.tasks.Retrieval`` (softmax over candidates with
log-Q correction and accidental hits removed) whose candidates are the batch's own
targets (in-batch negatives) plus ``S`` negatives shared by the batch, drawn from a
log-uniform distribution over the popularity-sorted vocabulary ("mixed negative
sampling"). In regime ``all`` the task runs once per position over the ``B`` sequences'
targets at that position, so the logits are ``N`` blocks of ``[B, B + S]`` — never one
``[B·N, B·N]`` matrix.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrs_linear.config import ModelConfig
from tfrs_linear.layers import TransformerBlock

PAD, OOV = 0, 1
_NEG = -1e9


def _embedding_init():
    return tf.keras.initializers.RandomNormal(stddev=0.02)


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class SequenceEncoder(tf.keras.layers.Layer):
    """Item ids ``[batch, max_len]`` (int, 0 = padding, left-padded) → ``[batch, max_len, d]``.

    ``embed -> + position -> LayerNorm -> dropout -> blocks``; padded positions output 0.
    ``encoder(item_ids, last_only=True)`` returns the newest position only,
    ``[batch, 1, d]``, equal to ``encoder(item_ids)[:, -1:]``: the last block then runs
    one query (the newest position's causal prefix is the whole sequence), which is all a
    query tower, a last-position loss or a serving signature needs.
    With ``attention="elastic"`` and ``use_memory=True`` (non-causal only) the first
    block's interest tokens come from an :class:`~tfrs_linear.layers.InterestMemory`
    read with the embedded sequence; the blocks hand their interests to the next one.
    """

    def __init__(
        self,
        vocab_size,
        max_len,
        d_model=64,
        num_layers=2,
        num_heads=2,
        ffn_dim=256,
        attention="linrec",
        causal=True,
        dropout=0.2,
        attention_dropout=0.2,
        layer_norm_epsilon=1e-12,
        normalization="paper",
        chunk_size=64,
        num_interests=16,
        recency_bias=False,
        use_memory=False,
        memory_keys=128,
        memory_top_m=8,
        item_embedding=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.max_len = int(max_len)
        self.d_model = int(d_model)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.ffn_dim = int(ffn_dim)
        self.attention = attention
        self.causal = bool(causal)
        self.dropout = float(dropout)
        self.attention_dropout = float(attention_dropout)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalization = normalization
        self.chunk_size = int(chunk_size)
        self.num_interests = int(num_interests)
        self.recency_bias = bool(recency_bias)
        self.use_memory = bool(use_memory)
        self.memory_keys = int(memory_keys)
        self.memory_top_m = int(memory_top_m)
        if self.use_memory and (attention != "elastic" or self.causal):
            raise ValueError("use_memory needs attention='elastic' and a non-causal encoder.")
        self.item_embedding = item_embedding or tf.keras.layers.Embedding(
            self.vocab_size,
            self.d_model,
            embeddings_initializer=_embedding_init(),
            name="item_embedding",
        )
        self.position_embedding = tf.keras.layers.Embedding(
            self.max_len,
            self.d_model,
            embeddings_initializer=_embedding_init(),
            name="position_embedding",
        )
        self.input_norm = tf.keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="input_norm"
        )
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        hand_off = self.attention == "elastic" and not self.causal
        self.blocks = [
            TransformerBlock(
                num_heads=self.num_heads,
                ffn_dim=self.ffn_dim,
                attention=self.attention,
                causal=self.causal,
                dropout=self.dropout,
                attention_dropout=self.attention_dropout,
                layer_norm_epsilon=self.layer_norm_epsilon,
                normalization=self.normalization,
                chunk_size=self.chunk_size,
                num_interests=self.num_interests,
                # Non-causal ELASTIC hands P' from block to block (and the memory gives
                # the first P): only a block that starts the chain has tokens of its own.
                learned_interests=not hand_off or (i == 0 and not self.use_memory),
                recency_bias=self.recency_bias,
                name=f"block_{i}",
            )
            for i in range(self.num_layers)
        ]
        self.memory = None
        if self.use_memory:
            from tfrs_linear.layers import InterestMemory

            self.memory = InterestMemory(
                num_interests=self.num_interests,
                num_keys=self.memory_keys,
                top_m=self.memory_top_m,
                name="interest_memory",
            )

    def call(self, item_ids, training=None, last_only=False):
        item_ids = tf.convert_to_tensor(item_ids)
        if item_ids.shape.rank != 2:
            raise ValueError(f"item_ids must be [batch, max_len], got shape {item_ids.shape}.")
        if item_ids.shape[1] is not None and item_ids.shape[1] != self.max_len:
            raise ValueError(
                f"item_ids must be left-padded to max_len={self.max_len}, got length "
                f"{item_ids.shape[1]}."
            )
        mask = tf.not_equal(item_ids, PAD)
        x = self.item_embedding(item_ids)
        positions = self.position_embedding(tf.range(self.max_len))
        x = x + tf.cast(positions, x.dtype)[tf.newaxis]
        x = self.input_dropout(self.input_norm(x), training=training)
        x = x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]
        interests = None
        if self.memory is not None:
            interests = self.memory(x, mask=mask)
        hand_off = self.attention == "elastic" and not self.causal
        for i, block in enumerate(self.blocks):
            last = bool(last_only) and i == len(self.blocks) - 1
            if hand_off:
                x, interests = block(
                    x,
                    mask=mask,
                    training=training,
                    interests=interests,
                    return_interests=True,
                    last_only=last,
                )
            else:
                x = block(x, mask=mask, training=training, last_only=last)
        return x

    def get_config(self):
        config = super().get_config()
        for name in (
            "vocab_size", "max_len", "d_model", "num_layers", "num_heads", "ffn_dim",
            "attention", "causal", "dropout", "attention_dropout", "layer_norm_epsilon",
            "normalization", "chunk_size", "num_interests", "recency_bias", "use_memory", "memory_keys",
            "memory_top_m",
        ):
            config[name] = getattr(self, name)
        return config


def log_uniform_probability(ids, range_max):
    """P(k) of a log-uniform (Zipfian) draw of ranks ``k`` in ``[0, range_max)``."""
    k = tf.cast(ids, tf.float32)
    return (tf.math.log(k + 2.0) - tf.math.log(k + 1.0)) / tf.math.log(
        tf.cast(range_max, tf.float32) + 1.0
    )


def sample_log_uniform(num_samples, range_max, seed=None):
    """Ranks in ``[0, range_max)`` with P(k) ∝ log((k+2)/(k+1)) — XLA-friendly.

    The vocabulary is sorted by training popularity, so rank sampling approximates
    popularity sampling, as TF's log-uniform candidate sampler does.
    """
    u = tf.random.uniform([num_samples], dtype=tf.float32, seed=seed)
    k = tf.floor(tf.exp(u * tf.math.log(tf.cast(range_max, tf.float32) + 1.0))) - 1.0
    return tf.clip_by_value(tf.cast(k, tf.int32), 0, range_max - 1)


class SequentialRetrievalModel(tfrs.Model):
    """A TFRS retrieval model whose query tower encodes the user's item sequence.

    Inputs are dicts ``{"inputs": int [B, max_len], "targets": int [B, max_len] or [B]}``
    of vocabulary indices (0 = padding, 1 = out of vocabulary, catalogue = 2..V-1).
    ``model(inputs)`` returns the user embeddings ``[B, d]`` (the newest position);
    :meth:`item_embeddings` the candidate tower's ``[V, d]`` table.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, **kwargs):
        super().__init__(**kwargs)
        config = config.resolved()  # replace() validates
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (padding, OOV and an item), got {vocab_size}.")
        self.config = config
        self.vocab_size = int(vocab_size)
        self.item_embedding = tf.keras.layers.Embedding(
            self.vocab_size,
            config.d_model,
            embeddings_initializer=_embedding_init(),
            name="item_embedding",
        )
        self.encoder = SequenceEncoder(
            vocab_size=self.vocab_size,
            max_len=config.max_len,
            d_model=config.d_model,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            ffn_dim=config.ffn_dim,
            attention=config.attention,
            causal=config.is_causal,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            layer_norm_epsilon=config.layer_norm_epsilon,
            normalization=config.normalization,
            chunk_size=config.chunk_size,
            num_interests=config.num_interests,
            recency_bias=config.uses_recency_bias,
            use_memory=config.use_memory,
            memory_keys=config.memory_keys,
            memory_top_m=config.memory_top_m,
            item_embedding=self.item_embedding,
            name="encoder",
        )
        self.candidate_embedding = (
            self.item_embedding
            if config.tie_embeddings
            else tf.keras.layers.Embedding(
                self.vocab_size,
                config.d_model,
                embeddings_initializer=_embedding_init(),
                name="candidate_embedding",
            )
        )
        # The sampled loss (see _sampled_loss); no metrics: evaluation is the full ranking
        # of tfrs_linear.evaluation, exact and batched.
        self.task = tfrs.tasks.Retrieval(remove_accidental_hits=True, name="retrieval")
        # Pad and OOV never compete as candidates.
        bias = np.zeros([self.vocab_size], np.float32)
        bias[[PAD, OOV]] = _NEG
        self._candidate_bias = tf.constant(bias)

    # -- towers ---------------------------------------------------------------------
    def build_all(self):
        """Creates every variable (for restoring weights or exporting)."""
        self.encode(tf.zeros([1, self.config.max_len], tf.int32))
        self.item_embeddings()
        return self

    def encode(self, item_ids, training=False, last_only=True):
        """User embeddings ``[B, d]`` (float32) from left-padded item ids ``[B, max_len]``.

        The last block computes the newest position only; ``last_only=False`` computes
        every position and slices (the same values; kept for comparisons).
        """
        sequence = self.encoder(item_ids, training=training, last_only=last_only)
        return tf.cast(sequence[:, -1, :], tf.float32)

    def item_embeddings(self):
        """The candidate tower: ``[V, d]`` float32, row i = vocabulary index i."""
        if not self.candidate_embedding.built:
            self.candidate_embedding(tf.zeros([1], tf.int32))
        return tf.cast(self.candidate_embedding.embeddings, tf.float32)

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            inputs = inputs["inputs"]
        return self.encode(inputs, training=training)

    # -- loss -----------------------------------------------------------------------
    def compute_loss(self, inputs, training=False):
        item_ids = inputs["inputs"]
        targets = tf.cast(inputs["targets"], tf.int32)
        # Regime "last" needs the newest position only: the last block runs one query.
        last_only = self.config.regime != "all"
        sequence = tf.cast(
            self.encoder(item_ids, training=training, last_only=last_only), tf.float32
        )
        weights = tf.cast(targets > OOV, tf.float32)
        denominator = tf.maximum(tf.reduce_sum(weights), 1.0)
        if self.config.loss == "sampled":
            queries = sequence if self.config.regime == "all" else sequence[:, -1, :]
            return self._sampled_loss(queries, targets, weights) / denominator
        if self.config.regime == "all":
            queries = tf.reshape(sequence, [-1, self.config.d_model])
            targets = tf.reshape(targets, [-1])
            weights = tf.reshape(weights, [-1])
        else:
            queries = sequence[:, -1, :]
        per_example = self._full_loss(queries, targets)
        return tf.reduce_sum(per_example * weights) / denominator

    def _full_loss(self, queries, targets):
        logits = tf.matmul(queries, self.item_embeddings(), transpose_b=True)
        logits = logits + self._candidate_bias
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)

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
        catalogue = self.vocab_size - 2
        num = min(self.config.num_negatives, catalogue)
        negatives = sample_log_uniform(num, catalogue) + 2  # shared by the batch
        negative_embeddings = tf.gather(table, negatives)
        top = log_uniform_probability(0, catalogue)

        def block(args):
            q, t, w = args
            ids = tf.concat([t, negatives], axis=0)
            candidates = tf.concat([tf.gather(table, t), negative_embeddings], axis=0)
            probability = log_uniform_probability(tf.maximum(ids - 2, 0), catalogue) / top
            real = tf.broadcast_to(ids[tf.newaxis, :] > OOV, [tf.shape(q)[0], tf.shape(ids)[0]])
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

        if queries.shape.rank == 2:
            return block((queries, targets, weights))
        per_position = tf.map_fn(
            block,
            (tf.transpose(queries, [1, 0, 2]), tf.transpose(targets), tf.transpose(weights)),
            fn_output_signature=tf.TensorSpec([], tf.float32),
        )
        return tf.reduce_sum(per_position)


def save_model_dir(model: SequentialRetrievalModel, vocab, directory):
    """Writes ``config.json``, ``vocab.txt`` and ``weights/`` (a TF checkpoint)."""
    from tfrs_linear import data as data_lib

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save(directory / "config.json")
    data_lib.save_vocabulary(vocab, directory / "vocab.txt")
    model.save_weights(str(directory / "weights" / "model"))


def load_model_dir(directory):
    """``(model, config, vocab)`` from a directory written by ``tfrs-linear train``."""
    from tfrs_linear import data as data_lib

    directory = Path(directory)
    for name in ("config.json", "vocab.txt"):
        if not (directory / name).exists():
            raise FileNotFoundError(
                f"{directory} is not a trained model directory: {name} is missing "
                "(train one with `tfrs-linear train --output DIR`)."
            )
    config = ModelConfig.load_saved(directory / "config.json")
    vocab = data_lib.load_vocabulary(directory / "vocab.txt")
    model = SequentialRetrievalModel(config, len(vocab)).build_all()
    weights = directory / "weights" / "model"
    if not tf.train.latest_checkpoint(str(directory / "weights")):
        raise FileNotFoundError(f"{directory}: no weights under {directory / 'weights'}")
    model.load_weights(str(weights)).expect_partial()
    return model, config, vocab
