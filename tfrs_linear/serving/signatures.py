"""The SavedModel's signatures: raw item ids in, exact top-k raw ids and scores out.

* ``serving_default``: ``item_ids`` string ``[batch, length]`` (raw ids, oldest first,
  right-padded with ``""``; any length, the newest ``max_len`` are used; unknown ids
  and the reserved ``[PAD]``/``[OOV]`` tokens map to the OOV index) →
  ``item_ids`` string ``[batch, k]`` and ``scores`` float32 ``[batch, k]``: exact
  brute-force top-k over the catalogue (indices 2..V-1; padding and OOV are never
  returned). With ``exclude_history`` every item of the request's history (all of it,
  not only the newest ``max_len``) scores ``-inf``; they only appear at the tail when
  ``k`` exceeds the catalogue minus the history.
* ``encode``: ``item_ids`` as above → ``user_embedding`` float32 ``[batch, d]``.
* ``serving_tf_example``: ``examples`` string ``[batch]`` of serialized ``tf.Example``
  with a bytes feature ``item_ids`` (variable length) → the outputs of
  ``serving_default``.

Scoring (``ServingSignatures(scoring=...)``, the export's scoring option):

* ``"exact"`` (the default): one float32 scan of the catalogue, then the top-k.
* ``"exact_copy"``: the same exact scan of a float32 copy of the catalogue owned by the
  serving module (the variable ``item_table``, ``[V - 2, d]``; the export grows by
  ``4 * V * d`` bytes). The query tower gathers rows of the model's item table (tied
  embeddings), which switches that variable to TensorFlow's copy-on-read mode: every
  dense read of it then copies the whole table, once per request. The copy is only read
  densely, so the scan reads it in place (docs/bench/million.md: ~8x less CPU at 1M items).
* ``"bf16"``: a candidate scan with a bfloat16 copy of the catalogue (the SavedModel's
  variable ``item_table_bf16``, ``[V - 2, d]``), the top ``candidates`` (``C >= k``,
  default ``max(DEFAULT_CANDIDATES, k)``, capped at the catalogue) of that scan, then an
  exact float32 re-rank of those ``C``: the returned scores are the exact float32 scores,
  and the top-k equals the exact scan's whenever the exact top-k is among the ``C``
  candidates. History items are excluded before the candidate cut, so they never take a
  candidate slot. An explicit ``candidates < k`` is refused. Whether the bfloat16 scan is
  faster depends on the CPU (docs/bench/million.md): on CPUs without a bfloat16 matrix
  unit TensorFlow's bfloat16 matmul is slower than the float32 scan.

Plain TF ops only: no ``jit_compile`` (stock TF Serving runs without XLA), no
``py_function``. A wrong input dtype is rejected by the signature itself ("expected to
be a string tensor"); a wrong rank fails a run-time check whose message names the
signature, the input and the expected shape (TF Serving does not check ranks against
the TensorSpec).
"""

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import NUM_RESERVED, OOV_INDEX
from tfrs_linear.layers.embedding import gather_rows

# The scoring options of an export (module docstring) and the bf16 path's default C.
from tfrs_linear.constants import SCORINGS  # noqa: E402
DEFAULT_CANDIDATES = 400

_IDS_WHAT = ("a string matrix [batch, length] of raw item ids, oldest first, right-padded "
             "with empty strings")
_EXAMPLES_WHAT = "a string vector [batch] of serialized tf.Example with a bytes feature item_ids"


def checked_rank(tensor, rank, signature, name, what):
    """``tensor`` after a run-time rank check with a readable message.

    The signature's TensorSpec fixes the static rank, so TF Serving (and a loaded
    signature) feed a wrong-rank tensor unchecked and a later op fails cryptically. The
    rank is counted from the run-time shape values (``Shape >= -1`` summed), which graph
    optimizations cannot fold away the way they fold ``tf.rank``.

    Args:
      tensor: the signature's input.
      rank: the rank it must have.
      signature: the signature's name, for the message.
      name: the input's name, for the message.
      what: what the input must be, for the message.
    """
    actual = tf.reduce_sum(tf.cast(tf.greater_equal(tf.shape(tensor), -1), tf.int32))
    check = tf.debugging.Assert(
        tf.equal(actual, rank),
        # No quotes: the Assert op's message escapes them.
        [f"{signature}: input {name} must be {what} (rank {rank}); got a tensor of shape",
         tf.shape(tensor)],
    )
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def _vocabulary_tables(vocab_asset):
    """(raw id → index, default OOV; index → raw id, default "") from the asset file."""
    index_table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            vocab_asset,
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        ),
        default_value=OOV_INDEX,
        name="item_index",
    )
    id_table = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            vocab_asset,
            key_dtype=tf.int64,
            key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
            value_dtype=tf.string,
            value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
        ),
        default_value="",
        name="item_id",
    )
    return index_table, id_table


class ServingSignatures:
    """Builds the ``tf.Module`` that an export saves, and its three signatures.

    The module holds the model's variables, the vocabulary asset and two lookup tables
    built from it (raw id ↔ index). Its signature functions are ``tf.function`` s of
    this object's methods :meth:`serving_default`, :meth:`encode` and
    :meth:`serving_tf_example`, which share the steps :meth:`prepare` (raw ids → the
    model's left-padded indices and the history mask), :meth:`encode_raw` and
    :meth:`top_k`. The Keras model is only used by those methods when they are traced,
    never tracked by the module, so the SavedModel holds plain variables and functions
    (no Keras metadata). The functions are never compiled with XLA (no ``jit_compile``):
    stock TF Serving runs without it.

    Args:
      model: a built ``SequentialRetrievalModel``.
      vocab_path: the vocabulary file (line ``i`` holds the raw id of index ``i``); it
        becomes the SavedModel's asset ``assets/vocab.txt``.
      k: recommendations per request, capped at the catalogue size (``>= 1``).
      exclude_history: whether the items of a request's history score ``-inf``.
      scoring: one of :data:`SCORINGS` (module docstring); ``"exact"`` by default.
      candidates: the bf16 path's ``C``, an integer ``>= k`` (capped at the catalogue);
        ``None``: ``max(DEFAULT_CANDIDATES, k)``. Refused with ``scoring="exact"``.

    Attributes:
      module: the ``tf.Module`` to save.
      k: the effective ``k`` (``min(k, catalogue size)``).
      max_len, d_model: from the model's configuration.
      vocab_size: the model's vocabulary size (reserved ids included).
      exclude_history: as given, a bool.
      scoring: as given.
      candidates: the effective ``C`` (``None`` with ``"exact"``).

    Raises:
      ValueError: the vocabulary has no catalogue item, ``k < 1``, an unknown
        ``scoring``, or a bad ``candidates`` (not an integer ``>= k``, or given with
        ``"exact"``).
    """

    def __init__(self, model, vocab_path, k, exclude_history, scoring="exact",
                 candidates=None):
        vocab_size = int(model.vocab_size)
        catalogue = vocab_size - NUM_RESERVED
        if catalogue < 1:
            raise ValueError("the vocabulary has no catalogue items (indices 2..V-1)")
        if int(k) < 1:
            raise ValueError(f"--k must be >= 1, got {k}")
        self.k = min(int(k), catalogue)
        # The export's only reads of the model configuration.
        self.max_len = int(model.config.max_len)
        self.d_model = int(model.config.d_model)
        self.vocab_size = vocab_size
        self.exclude_history = bool(exclude_history)
        self.scoring = scoring
        self.candidates = checked_scoring(scoring, candidates, self.k, catalogue)
        self._model = model

        module = tf.Module(name="tfrs_linear_serving")
        module.model_variables = list(model.variables)
        if scoring == "exact_copy":
            # Only ever read densely, so never in copy-on-read mode (module docstring).
            module.item_table = tf.Variable(model.item_embeddings()[NUM_RESERVED:],
                                            trainable=False, name="item_table")
        if scoring == "bf16":
            # A snapshot of the catalogue rows (2..V-1), taken at export.
            module.item_table_bf16 = tf.Variable(
                tf.cast(model.item_embeddings()[NUM_RESERVED:], tf.bfloat16),
                trainable=False, name="item_table_bf16")
        module.vocab_asset = tf.saved_model.Asset(str(vocab_path))
        module.index_table, module.id_table = _vocabulary_tables(module.vocab_asset)
        ids_spec = [tf.TensorSpec([None, None], tf.string, name="item_ids")]
        examples_spec = [tf.TensorSpec([None], tf.string, name="examples")]
        module.serving_default = tf.function(self.serving_default, input_signature=ids_spec)
        module.encode = tf.function(self.encode, input_signature=ids_spec)
        module.serving_tf_example = tf.function(self.serving_tf_example,
                                                input_signature=examples_spec)
        self.module = module

    def signatures(self):
        """``{name: concrete function}`` for ``tf.saved_model.save(signatures=...)``."""
        m = self.module
        return {
            "serving_default": m.serving_default.get_concrete_function(),
            "encode": m.encode.get_concrete_function(),
            "serving_tf_example": m.serving_tf_example.get_concrete_function(),
        }

    # -- the signatures --------------------------------------------------------------

    def serving_default(self, item_ids):
        """Raw ids ``[B, L]`` → ``{"item_ids": [B, k], "scores": [B, k]}``."""
        item_ids = checked_rank(item_ids, 2, "serving_default", "item_ids", _IDS_WHAT)
        return self.top_k(item_ids)

    def encode(self, item_ids):
        """Raw ids ``[B, L]`` → ``{"user_embedding": [B, d]}``."""
        item_ids = checked_rank(item_ids, 2, "encode", "item_ids", _IDS_WHAT)
        user, _ = self.encode_raw(item_ids)
        return {"user_embedding": user}

    def serving_tf_example(self, examples):
        """Serialized ``tf.Example`` s ``[B]`` → the outputs of :meth:`serving_default`."""
        examples = checked_rank(examples, 1, "serving_tf_example", "examples", _EXAMPLES_WHAT)
        parsed = tf.io.parse_example(
            examples, {"item_ids": tf.io.RaggedFeature(tf.string)}
        )
        item_ids = parsed["item_ids"].to_tensor(default_value="")
        item_ids = tf.reshape(item_ids, [tf.shape(examples)[0], -1])
        return self.top_k(item_ids)

    # -- the shared steps ------------------------------------------------------------

    def prepare(self, item_ids):
        """Raw ids [B, L] → (left-padded indices [B, W] int32, history mask [B, V]).

        ``W`` is the request's longest history, at most ``max_len`` (at least 1): the
        encoder computes at its input's width, so a request of short histories costs
        what they do, not ``max_len`` positions (the same embeddings: padding is masked;
        :meth:`encode_raw` pads a request longer than half of ``max_len`` to ``max_len``).
        The mask is ``None`` without ``exclude_history``. Empty strings are padding;
        unknown ids and the reserved tokens become the OOV index.
        """
        max_len = self.max_len
        valid = tf.not_equal(item_ids, "")
        ids = tf.maximum(self.module.index_table.lookup(item_ids), OOV_INDEX)  # reserved → OOV
        valid_i = tf.cast(valid, tf.int64)
        count = tf.reduce_sum(valid_i, axis=1, keepdims=True)
        width = tf.clip_by_value(tf.reduce_max(count), 1, max_len)
        from_end = count - tf.cumsum(valid_i, axis=1)  # 0 = the newest real item
        keep = tf.logical_and(valid, from_end < max_len)
        kept = tf.where(keep)  # [n, 2]: (row, position)
        cols = (width - 1) - tf.gather_nd(from_end, kept)
        batch = tf.shape(item_ids, out_type=tf.int64)[0]
        padded = tf.scatter_nd(
            tf.stack([kept[:, 0], cols], axis=1),
            tf.cast(tf.gather_nd(ids, kept), tf.int32),
            tf.stack([batch, width]),
        )
        padded = tf.reshape(padded, [-1, width])
        history = self.history_mask(ids, valid) if self.exclude_history else None
        return padded, history

    def history_mask(self, ids, valid):
        """``[B, V]`` bool: True at every index of ``ids [B, L]`` where ``valid``."""
        seen = tf.where(valid)
        hits = tf.scatter_nd(
            tf.stack([seen[:, 0], tf.cast(tf.gather_nd(ids, seen), tf.int64)], axis=1),
            tf.ones(tf.shape(seen)[:1], tf.float32),
            tf.stack([tf.shape(ids, out_type=tf.int64)[0],
                      tf.constant(self.vocab_size, tf.int64)]),
        )
        return hits > 0.0

    def encode_raw(self, item_ids):
        """Raw ids [B, L] → (user embeddings [B, d] float32, history mask or ``None``)."""
        padded, history = self.prepare(item_ids)
        offsets = None
        if self._model.config.positions == "from_start":
            # The events before the newest max_len (the full history arrives).
            count = tf.reduce_sum(tf.cast(tf.not_equal(item_ids, ""), tf.int32), axis=1)
            offsets = tf.maximum(count - self.max_len, 0)
        width = tf.shape(padded)[1]

        def encode(ids):
            return tf.cast(self._model.encode(ids, training=False, offsets=offsets), tf.float32)

        def at_max_len():
            ids = tf.pad(padded, [[0, 0], [self.max_len - width, 0]])
            ids.set_shape([None, self.max_len])
            return encode(ids)

        # Static shapes run faster in TensorFlow's executor (0.65-0.78x for a full history
        # of 200 at its own, unknown width); a history of at most half of max_len runs at
        # its width, 1.3-28x faster than padded to max_len (README, "Serving latency").
        user = tf.cond(2 * width > self.max_len, at_max_len, lambda: encode(padded))
        return user, history

    def top_k(self, item_ids):
        """Raw ids [B, L] → exact top-k raw ids and scores over the catalogue."""
        user, history = self.encode_raw(item_ids)
        return self.rank(user, history)

    def rank(self, user, history=None):
        """User embeddings [B, d] → ``{"item_ids", "scores"}`` ``[B, k]``: the top-k of
        the catalogue by exact float32 scores (with ``"bf16"`` among the ``C`` candidates
        of the bfloat16 scan); items where ``history [B, V]`` is True score ``-inf``."""
        if self.scoring == "bf16":
            values, indices = self._bf16_top_k(user, history)
        elif self.scoring == "exact_copy":
            scores = _excluded(tf.matmul(user, self.module.item_table, transpose_b=True),
                               history)
            values, indices = tf.math.top_k(scores, k=self.k, sorted=True)
        else:
            # The catalogue rows 2..V-1 (a leading-rows slice: a view of the table, no
            # copy), so that no [B, V] score matrix is copied to drop the reserved rows.
            items = tf.cast(self._model.item_embeddings(), tf.float32)[NUM_RESERVED:]
            scores = tf.matmul(user, items, transpose_b=True)
            scores = _excluded(scores, history)
            values, indices = tf.math.top_k(scores, k=self.k, sorted=True)
        ids = self.module.id_table.lookup(tf.cast(indices, tf.int64) + NUM_RESERVED)
        return {"item_ids": ids, "scores": values}

    def _bf16_top_k(self, user, history):
        """(exact scores [B, k], catalogue positions [B, k]): the bfloat16 scan's top C,
        re-scored in float32 and cut to k. The candidates are sorted by position, so ties
        of exact scores break by the lower position, as in the exact scan's top_k."""
        approx = tf.matmul(tf.cast(user, tf.bfloat16), self.module.item_table_bf16,
                           transpose_b=True)
        approx = _excluded(tf.cast(approx, tf.float32), history)
        _, cand = tf.math.top_k(approx, k=self.candidates, sorted=False)
        cand = tf.sort(cand, axis=1)  # [B, C] catalogue positions
        # C rows of a dense read of the model's table (no copy: layers.embedding).
        table = self._model.candidate_embedding.embeddings
        rows = tf.cast(gather_rows(table, cand + NUM_RESERVED), tf.float32)  # [B, C, d]
        exact = tf.squeeze(tf.matmul(rows, user[:, :, None]), axis=2)  # [B, C]
        if history is not None:
            hidden = tf.gather(history[:, NUM_RESERVED:], cand, batch_dims=1)
            exact = tf.where(hidden, tf.constant(-np.inf, tf.float32), exact)
        values, best = tf.math.top_k(exact, k=self.k, sorted=True)
        return values, tf.gather(cand, best, batch_dims=1)


def _excluded(scores, history):
    """Catalogue scores [B, V - 2] with the ``history [B, V]`` items at ``-inf``."""
    if history is None:
        return scores
    return tf.where(history[:, NUM_RESERVED:], tf.constant(-np.inf, tf.float32), scores)


def checked_scoring(scoring, candidates, k, catalogue=None):
    """The effective ``C`` of the ``bf16`` path (``None`` for ``exact``), capped at
    ``catalogue`` when given; raises ValueError naming the flag for an unknown
    ``scoring`` or a bad ``candidates``. An export can call it before anything is
    loaded or created (``catalogue=None``)."""
    if scoring not in SCORINGS:
        raise ValueError(f"--scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if scoring != "bf16":
        if candidates is not None:
            raise ValueError("--candidates applies to --scoring bf16 only (the exact scan "
                             f"has no candidate cut), got {candidates!r}")
        return None
    cap = catalogue if catalogue is not None else np.inf
    if candidates is None:
        return int(min(max(DEFAULT_CANDIDATES, k), cap))
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) \
            or candidates < k:
        raise ValueError(f"--candidates must be an integer >= k ({k}): the exact re-rank "
                         f"keeps k of the C candidates; got {candidates!r}")
    return int(min(int(candidates), cap))
