"""The sequence encoder: the query tower of a sequential retrieval model."""

import numbers

import tensorflow as tf

from tfrs_linear.constants import PAD_INDEX, POSITIONS, STATE_COUNT, STATE_NEWEST
from tfrs_linear.streamability import check_streamable, is_streamable
from tfrs_linear.layers.dropout import CounterDropout
from tfrs_linear.layers.embedding import TableEmbedding
from tfrs_linear.layers.interest_memory import InterestMemory
from tfrs_linear.layers.padding import (
    PADDINGS, back_to_right, check_padding, find_padding_errors, left_aligned,
    padding_error_message,
)
from tfrs_linear.layers.transformer import TransformerBlock


def embedding_initializer():
    """The initializer of every item and position embedding table: N(0, 0.02), as in
    SASRec/RecBole."""
    return tf.keras.initializers.RandomNormal(stddev=0.02)


def _as_is(value):
    return value


# The encoder's output forms (its input paddings: layers.padding.PADDINGS). (Option
# lists belong in constants.py; this one and PADDINGS are to move there.)
ENCODER_OUTPUTS = ("sequence", "last")

# The encoder's configuration, in get_config()'s order: argument -> how it is stored.
_ARGUMENTS = {
    "vocab_size": int, "max_len": int, "d_model": int, "num_layers": int, "num_heads": int,
    "ffn_dim": int, "attention": _as_is, "causal": bool, "dropout": float,
    "attention_dropout": float, "layer_norm_epsilon": float, "normalization": _as_is,
    "chunk_size": int, "num_interests": int, "recency_bias": bool, "use_memory": bool,
    "memory_keys": int, "memory_top_m": int, "padding": _as_is, "positions": _as_is,
}


@tf.keras.utils.register_keras_serializable(package="tfrs_linear")
class SequenceEncoder(tf.keras.layers.Layer):
    """Item ids ``[batch, length]`` (int, 0 = padding) → per-position states or the user
    embedding.

    The query tower of SASRec-style models: ``embed -> + learned position -> LayerNorm ->
    dropout -> num_layers TransformerBlocks``, whose attention is ``"softmax"``,
    ``"linrec"`` or ``"elastic"``. Inside, every row is left-padded (newest item last);
    padded positions output 0.

    Input: ``[batch, L]`` with ``L <= max_len``, padded on the side ``padding`` says
    (``"left"``: ``[0 0 a b c]``, ``"right"``: ``[a b c 0 0]``; oldest item first either
    way). The encoder computes at the input's own width ``L``, not ``max_len``: padding
    only ever precedes the real items and is masked, so a row gives the same states at any
    width that holds it (up to float rounding), and a batch of short rows costs what its
    width does (the training pipeline's length buckets rely on it). Under XLA each width
    is one compilation. A right-padded row is aligned to the left-padded layout, so both
    paddings of the same items give the same states.
    Output: ``output="sequence"``: ``[batch, L, d]``, aligned with the input;
    ``output="last"``: ``[batch, d]``, the newest position (the user embedding).

    A row padded on the wrong side (a 0 after a real item with ``padding="left"``, before
    one with ``"right"``) would silently give wrong states (with ``"left"``, a right-padded
    row's user embedding is the all-zero padding state). The encoder checks: eagerly it
    raises ``ValueError`` naming the rows; in a ``tf.function`` a ``tf.debugging.Assert``
    raises ``InvalidArgumentError`` with the same message. Under XLA (``jit_compile=True``)
    ``Assert`` is dropped and the compiled step computes on without a check: call
    :func:`check_padding` on the batch before the compiled step.

    ``encoder(item_ids, last_only=True)`` (``output="sequence"``) returns the newest
    position only, ``[batch, 1, d]``, equal to the full computation's newest position:
    the last block then runs one query (the newest position's causal prefix is the whole
    sequence), which is all a query tower, a last-position loss or a serving signature
    needs. ``output="last"`` does the same.

    With ``attention="elastic"`` and ``use_memory=True`` (non-causal only) the first
    block's interest tokens come from an :class:`~tfrs_linear.layers.InterestMemory`
    read with the embedded sequence. Non-causal ELASTIC blocks hand their interests to
    the next block, so only the block that starts the chain has interest tokens of its
    own (none behind the memory).

    A model configuration builds one without copying fields:
    ``SequenceEncoder(vocab_size, **model_config.encoder_kwargs())``.

    Args:
        vocab_size: rows of the item embedding (0 = padding, 1 = OOV, then the items).
        max_len: the longest input (and the rows of the position embedding).
        d_model: the model width.
        num_layers: the number of :class:`~tfrs_linear.layers.TransformerBlock` s.
        num_heads: attention heads per block (``d_model`` must be divisible by it).
        ffn_dim: the feed-forward width of each block.
        attention: ``"softmax"``, ``"linrec"`` or ``"elastic"``.
        causal: whether position t only sees positions <= t.
        dropout: dropout after the input LayerNorm and inside the blocks.
        attention_dropout: the blocks' attention dropout.
        layer_norm_epsilon: epsilon of every LayerNorm.
        normalization: LinRec's ``"paper"`` or ``"token"`` normalization.
        chunk_size: chunk length of the causal linear attentions.
        num_interests: ELASTIC's interest tokens.
        recency_bias: ELASTIC's learned per-interest recency slopes.
        use_memory: read the first block's interests from a product-key memory
            (ELASTIC, non-causal only).
        memory_keys: the memory's sub-keys per half (``memory_keys²`` rows).
        memory_top_m: memory rows read per query.
        item_embedding: an existing ``Embedding`` layer to share (e.g. with a tied
            candidate tower); a new one named ``"item_embedding"`` otherwise.
        output: ``"sequence"`` (default) or ``"last"`` (the newest position, ``[batch, d]``).
        padding: ``"left"`` (default, the package's data pipelines) or ``"right"``.
            Configurations saved before these two existed load as ``"sequence"``/``"left"``.
        positions: the learned position embedding (``max_len`` rows):
            ``"from_end"`` (default; row ``max_len - 1`` is the newest item, so a new
            event moves every position: not streamable), ``"from_start"`` (row ``i`` is
            the user's ``i``-th event counted from the first, rows past ``max_len - 1``
            share the last one; a window cut from a longer history passes
            ``position_offsets``, the events before it) or ``"none"`` (no position
            embedding: order comes from causality and ELASTIC's recency bias).
        **kwargs: ``tf.keras.layers.Layer`` arguments (``name``, ``dtype``...).
    """

    # encode_state's parallel pass takes at most this many events (batch x width) at
    # once: a larger batch runs in groups of rows, rows longer than this take the step
    # loop, whose memory does not grow with the history. The pass holds every event's
    # activations: about 5-7 KB per event at the defaults (d_model 64, 2 blocks; batch
    # 64 x 20,000 events in one pass: 6.3 GB LinRec, 9.4 GB ELASTIC peak RSS against
    # 2.1 GB for the loop), so 2^18 events stay near 2 GB.
    max_parallel_events = 1 << 18

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
        chunk_size=32,
        num_interests=16,
        recency_bias=False,
        use_memory=False,
        memory_keys=128,
        memory_top_m=8,
        item_embedding=None,
        output="sequence",
        padding="left",
        positions="from_end",
        **kwargs,
    ):
        super().__init__(**kwargs)
        arguments = locals()  # exactly the named arguments above, plus self/kwargs/item_embedding
        for name, cast in _ARGUMENTS.items():
            setattr(self, name, cast(arguments[name]))
        # `output` is a read-only property of Keras layers (the functional output).
        self.output_form = output
        if self.output_form not in ENCODER_OUTPUTS:
            raise ValueError(f"output must be one of {ENCODER_OUTPUTS}, got {output!r}.")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
        if self.use_memory and (self.attention != "elastic" or self.causal):
            raise ValueError("use_memory needs attention='elastic' and a non-causal encoder.")
        # Sub-layers keep their attribute names: they are the checkpoints' keys.
        self._build_embeddings(item_embedding)
        self.blocks = [self._make_block(i) for i in range(self.num_layers)]
        self.memory = self._make_memory() if self.use_memory else None

    # -- construction steps -----------------------------------------------------------
    @property
    def hands_off_interests(self):
        """Whether the blocks hand ELASTIC's interests on (non-causal ELASTIC)."""
        return self.attention == "elastic" and not self.causal

    def _build_embeddings(self, item_embedding):
        self.item_embedding = item_embedding or TableEmbedding(
            self.vocab_size,
            self.d_model,
            embeddings_initializer=embedding_initializer(),
            name="item_embedding",
        )
        self.position_embedding = None
        if self.positions != "none":
            self.position_embedding = TableEmbedding(
                self.max_len,
                self.d_model,
                embeddings_initializer=embedding_initializer(),
                name="position_embedding",
            )
        self.input_norm = tf.keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="input_norm"
        )
        self.input_dropout = CounterDropout(self.dropout)

    def _make_block(self, i):
        # Non-causal ELASTIC hands P' from block to block (and the memory gives the first
        # P): only a block that starts the chain has interest tokens of its own.
        starts_chain = i == 0 and not self.use_memory
        return TransformerBlock(
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
            learned_interests=not self.hands_off_interests or starts_chain,
            recency_bias=self.recency_bias,
            name=f"block_{i}",
        )

    def _make_memory(self):
        return InterestMemory(
            num_interests=self.num_interests,
            num_keys=self.memory_keys,
            top_m=self.memory_top_m,
            name="interest_memory",
        )

    # -- forward ------------------------------------------------------------------------
    def _check_ids(self, item_ids):
        if item_ids.shape.rank != 2:
            raise ValueError(f"item_ids must be [batch, length], got shape {item_ids.shape}.")
        if item_ids.shape[1] is not None and item_ids.shape[1] > self.max_len:
            raise ValueError(
                f"item_ids are {item_ids.shape[1]} long, longer than max_len={self.max_len}: "
                f"keep each user's newest {self.max_len} items."
            )

    def _check_padding(self, item_ids, padding=None):
        """Eagerly: a ``ValueError`` for rows padded on the wrong side. In a graph: a
        ``tf.debugging.Assert`` (an ``InvalidArgumentError`` when it runs). XLA drops
        ``Assert``: a ``jit_compile`` d function computes on regardless (see the class
        docstring), so compiled loops check batches first (:func:`check_padding`)."""
        padding = padding or self.padding
        if item_ids.shape[1] == 1:
            return  # one column is padded on both sides
        if tf.executing_eagerly():
            check_padding(item_ids.numpy(), padding)
            return
        real = tf.not_equal(item_ids, PAD_INDEX)
        if padding == "left":
            wrong = tf.logical_and(real[:, :-1], tf.logical_not(real[:, 1:]))
        else:
            wrong = tf.logical_and(tf.logical_not(real[:, :-1]), real[:, 1:])
        wrong_rows = tf.reduce_any(wrong, axis=1)
        # int32 rows: an Assert whose data are strings and int32 only is one op, with
        # an int64 datum it is wrapped in a cond of ~8 more (a served step counts them).
        tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(wrong_rows)),
            [padding_error_message(padding), tf.cast(tf.where(wrong_rows)[:, 0], tf.int32)],
            summarize=5,
        )

    def _position_vectors(self, mask, offsets):
        """The position embeddings of left-padded ``[B, L]`` inputs (None: none)."""
        if self.positions == "none":
            return None
        if self.positions == "from_end":
            # The newest item (column L - 1) takes row max_len - 1, whatever the width.
            rows = tf.range(self.max_len - tf.shape(mask)[1], self.max_len)
            return self.position_embedding(rows)[tf.newaxis]
        # from_start: the k-th real item of a row is event offset + k of its user.
        real = tf.cast(mask, tf.int32)
        index = tf.cumsum(real, axis=1) - 1
        if offsets is not None:
            index = index + tf.cast(tf.reshape(offsets, [-1, 1]), tf.int32)
        return self.position_embedding(tf.clip_by_value(index, 0, self.max_len - 1))

    def _embed(self, item_ids, mask, training, offsets=None):
        """Item + position embeddings, LayerNorm, dropout; padded positions are 0."""
        x = self.item_embedding(item_ids)
        positions = self._position_vectors(mask, offsets)
        if positions is not None:
            x = x + tf.cast(positions, x.dtype)
        x = self.input_dropout(self.input_norm(x), training=training)
        return x * tf.cast(mask, x.dtype)[:, :, tf.newaxis]

    def _encode(self, item_ids, training, last_only, offsets=None):
        """The blocks over left-padded ``[B, L]`` ids (see :meth:`call`)."""
        mask = tf.not_equal(item_ids, PAD_INDEX)
        x = self._embed(item_ids, mask, training, offsets)
        interests = None
        if self.memory is not None:
            interests = self.memory(x, mask=mask)
        for i, block in enumerate(self.blocks):
            last = bool(last_only) and i == len(self.blocks) - 1
            if self.hands_off_interests:
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

    def call(self, item_ids, training=None, last_only=False, position_offsets=None):
        """``position_offsets``: optional int ``[batch]``, how many of each user's events
        come before the row's first item (``positions="from_start"`` only; default 0)."""
        item_ids = tf.convert_to_tensor(item_ids)
        self._check_ids(item_ids)
        self._check_padding(item_ids)
        # Inside, every row is left-padded: the newest item is at the last column whatever
        # the padding side (the position embeddings count from there).
        real = tf.not_equal(item_ids, PAD_INDEX)
        x = self._encode(left_aligned(item_ids, real, self.padding), training,
                         last_only or self.output_form == "last", position_offsets)
        if self.output_form == "last":
            return x[:, -1]
        if last_only:
            return x
        return back_to_right(x, real, self.padding)

    # -- streaming: a constant-size state per user (docs/streaming.md) -------------------
    @property
    def streamable(self):
        """Whether the encoder has a constant-size per-user state: causal LinRec or
        ELASTIC blocks, no interest memory, positions ``"from_start"`` or ``"none"``
        (:func:`tfrs_linear.streamability.is_streamable`)."""
        return is_streamable(self)

    def _check_streamable(self):
        check_streamable(self)

    def initial_state(self, batch):
        """The state of ``batch`` users with no event yet: ``{name: float32 tensor}`` of
        static per-user shapes that never grow: ``"count"`` ``[B]`` (events seen),
        ``"newest_output"`` ``[B, d]`` (the newest event's output: the user embedding)
        and each block's attention state as ``"block_<i>.<name>"``."""
        self._check_streamable()
        state = {STATE_COUNT: tf.zeros([batch], tf.float32),
                 STATE_NEWEST: tf.zeros([batch, self.d_model], tf.float32)}
        for i, block in enumerate(self.blocks):
            for name, value in block.initial_state(batch).items():
                state[f"block_{i}.{name}"] = value
        return state

    def step(self, state, new_ids):
        """Feeds ``m`` new events per user; returns ``(new_state, user_embedding)``.

        ``new_ids`` int ``[B, m]``: the new items, oldest first, RIGHT-padded with 0 so
        that rows may add different numbers of events (a row of zeros keeps its state and
        embedding). ``user_embedding [B, d]`` float32 is the output at each user's newest
        event: what :meth:`call` with ``output="last"`` gives for the whole history
        (with ``positions="from_start"`` counted from the state's first event), for any
        history length, in O(m) per call. Inference only (no dropout).
        """
        self._check_streamable()
        new_ids = tf.convert_to_tensor(new_ids)
        self._check_ids_rank(new_ids, "new_ids")
        self._check_padding(new_ids, "right")
        real = tf.not_equal(new_ids, PAD_INDEX)
        added = tf.reduce_sum(tf.cast(real, tf.float32), axis=1)
        x = self.item_embedding(new_ids)
        if self.positions == "from_start":
            index = state[STATE_COUNT][:, tf.newaxis] + tf.cumsum(tf.cast(real, tf.float32), 1)
            index = tf.clip_by_value(tf.cast(index, tf.int32) - 1, 0, self.max_len - 1)
            x = x + tf.cast(self.position_embedding(index), x.dtype)
        x = self.input_norm(x) * tf.cast(real, x.dtype)[:, :, tf.newaxis]
        new_state = {}
        for i, block in enumerate(self.blocks):
            prefix = f"block_{i}."
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            own, x = block.step(own, x, real)
            new_state.update({prefix + k: v for k, v in own.items()})
        if new_ids.shape[1] == 1:
            last = tf.cast(x[:, 0], tf.float32)
        else:
            newest = tf.maximum(tf.cast(added, tf.int32) - 1, 0)
            last = tf.cast(tf.gather(x, newest, axis=1, batch_dims=1), tf.float32)
        user = tf.where(added[:, tf.newaxis] > 0, last, state[STATE_NEWEST])
        new_state[STATE_COUNT] = state[STATE_COUNT] + added
        new_state[STATE_NEWEST] = user
        return new_state, user

    def encode_state(self, item_ids, events_per_step=None, padding=None):
        """The state after a whole history; returns ``(state, user_embedding)``.

        ``item_ids [B, L]`` padded as ``padding`` says (default: the encoder's), of ANY
        length (not only ``max_len``): the state covers every event.

        By default (``events_per_step=None``) in one parallel pass, as :meth:`call`
        encodes a sequence: the causal blocks over the whole history (their chunked
        ops), each block's attention state taken from that block's inputs in ``O(L)``
        (``advance``), the user embedding the last block's newest output. Its memory
        grows with ``batch x L`` (every event's activations), so a batch of more than
        :attr:`max_parallel_events` events runs in groups of rows that fit, one pass per
        group in turn, and rows longer than that take the loop below (decided at run
        time when the shape is unknown). ``events_per_step`` (an int, or descending
        ints: the tiers, see :meth:`encode_tiers`) always takes the loop: :meth:`step`
        over the history in ``tf.while_loop``s, a static number of events per step,
        memory bounded by one step whatever the history's length, time 1.7x (LinRec)
        to 10x (ELASTIC) the parallel pass's at 20,000 events (more calls of the step
        graph, and ELASTIC's step is quadratic in its events).
        """
        self._check_streamable()
        item_ids = tf.convert_to_tensor(item_ids)
        self._check_ids_rank(item_ids, "item_ids")
        padding = padding or self.padding
        self._check_padding(item_ids, padding)
        if events_per_step is None:
            return self._encode_state_auto(item_ids, padding)
        return self._encode_state_loop(item_ids, padding, events_per_step)

    def _encode_state_auto(self, item_ids, padding):
        """One parallel pass for at most :attr:`max_parallel_events` events; a larger
        batch in groups of rows that fit, one pass per group in turn; rows longer than
        that by the step loop. Decided at trace time for static shapes, else at run time."""
        static = item_ids.shape.is_fully_defined()
        batch, width = (item_ids.shape.as_list() if static else
                        (tf.cast(d, tf.int64) for d in tf.unstack(tf.shape(item_ids))))
        budget = self.max_parallel_events
        routes = [(batch * width <= budget,
                   lambda: self._encode_state_parallel(item_ids, padding)),
                  (width <= budget, lambda: self._encode_state_grouped(item_ids, padding))]
        loop = lambda: self._encode_state_loop(item_ids, padding, None)  # noqa: E731
        if static:
            return next((route for fits, route in routes if fits), loop)()
        return tf.case(routes, default=loop, exclusive=False)

    def _encode_state_grouped(self, item_ids, padding):
        """The parallel pass on groups of ``max_parallel_events // width`` rows in turn
        (rows of padding complete the last group)."""
        batch, width = tf.unstack(tf.shape(item_ids))
        rows = tf.maximum(self.max_parallel_events // width, 1)
        groups = (batch + rows - 1) // rows
        ids = tf.pad(item_ids, [[0, groups * rows - batch], [0, 0]])
        ids = tf.reshape(ids, [groups, rows, width])
        specs = {name: tf.TensorSpec([None] + value.shape[1:].as_list(), value.dtype)
                 for name, value in self.initial_state(1).items()}
        user_spec = tf.TensorSpec([None, self.d_model], tf.float32)
        state, user = tf.map_fn(lambda group: self._encode_state_parallel(group, padding),
                                ids, fn_output_signature=(specs, user_spec),
                                parallel_iterations=1)  # one group's memory at a time

        def ungrouped(x):  # [groups, rows, ...] -> [batch, ...]
            return tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0))[:batch]

        state = {name: ungrouped(value) for name, value in state.items()}
        return state, ungrouped(user)

    def _encode_state_loop(self, item_ids, padding, events_per_step):
        """:meth:`encode_state` by steps (``events_per_step`` None: the default tiers)."""
        if padding == "left":  # to right-padded: [0 a b] -> [a b 0]
            lengths = tf.reduce_sum(tf.cast(tf.not_equal(item_ids, PAD_INDEX), tf.int32), 1)
            item_ids = tf.reverse_sequence(tf.reverse(item_ids, [1]), lengths, 1, 0)
        tiers = self._check_tiers(events_per_step)
        state = self.initial_state(tf.shape(item_ids)[0])
        start = 0
        for number, size in enumerate(tiers):
            last = number == len(tiers) - 1
            state, start = self._encode_tier(state, item_ids, start, size, last)
        return state, state[STATE_NEWEST]

    def _encode_state_parallel(self, item_ids, padding):
        """:meth:`encode_state`'s one pass over ``padding``-padded ``item_ids``."""
        # Left-aligned as in call, plus one column of padding: a history of width 0
        # (a new user) then needs no branch, and padding before the items changes nothing.
        ids = tf.pad(left_aligned(item_ids, tf.not_equal(item_ids, PAD_INDEX), padding),
                     [[0, 0], [1, 0]])
        mask = tf.not_equal(ids, PAD_INDEX)
        x = self._embed(ids, mask, training=False)
        state = {STATE_COUNT: tf.reduce_sum(tf.cast(mask, tf.float32), axis=1)}
        batch = tf.shape(ids)[0]
        for i, block in enumerate(self.blocks):
            for name, value in block.advance(block.initial_state(batch), x, mask).items():
                state[f"block_{i}.{name}"] = value
            x = block(x, mask=mask, training=False, last_only=i == len(self.blocks) - 1)
        # The newest column: the newest event's output, 0 for a row without events (as
        # the initial state's).
        state[STATE_NEWEST] = tf.cast(x[:, -1], tf.float32)
        return state, state[STATE_NEWEST]

    def encode_tiers(self):
        """The default step sizes of :meth:`encode_state`'s loop, largest first: LinRec's step
        costs O(m) in its ``m`` events (chunked), ELASTIC's O(m²) (dense), and each step
        also pays a fixed cost (one loop iteration of the whole step graph). Measured at
        batch 1 (no XLA): ``(1024, 256, 64)`` encodes 20,000 LinRec events 3.5x faster than
        steps of 64, ``(64, 16)`` ELASTIC's 2.1x faster than steps of 16 (its dense step's
        ``[B, H, k, m, m]`` weights keep ``m`` at 64: 33 MB at batch 64), and short
        histories stay on the small steps."""
        return (64, 16) if self.attention == "elastic" else (1024, 256, 64)

    def _check_tiers(self, events_per_step):
        tiers = self.encode_tiers() if events_per_step is None else events_per_step
        tiers = tuple(tiers) if isinstance(tiers, (tuple, list)) else (tiers,)
        ints = all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in tiers)
        if (not tiers or not ints or any(t < 1 for t in tiers)
                or list(tiers) != sorted(set(tiers), reverse=True)):
            raise ValueError("events_per_step must be a positive int or strictly "
                             f"decreasing positive ints, got {events_per_step!r}.")
        return tuple(int(t) for t in tiers)

    def _encode_tier(self, state, item_ids, start, size, last):
        """Steps of ``size`` events over ``item_ids[:, start:]``: as many as fit whole, or
        (``last``) enough to cover them all. Returns ``(state, next start)``."""
        # Python ints for a static width (XLA), tensors otherwise.
        width = item_ids.shape[1] if item_ids.shape[1] is not None else tf.shape(item_ids)[1]
        steps = (width - start + (size - 1 if last else 0)) // size
        if isinstance(steps, int) and steps == 0:
            return state, start  # a static history too short for this tier: no loop
        ids = item_ids[:, start:]
        if last:  # right-pads the rest to whole steps
            ids = tf.pad(ids, [[0, 0], [0, steps * size - (width - start)]])
        ids = ids[:, : steps * size]
        batch = tf.shape(item_ids)[0]
        # [steps, B, size]: each step's events have a static shape.
        chunks = tf.transpose(tf.reshape(ids, [batch, steps, size]), [1, 0, 2])

        def body(i, state):
            chunk = tf.gather(chunks, i)
            chunk.set_shape([item_ids.shape[0], size])
            return i + 1, self.step(state, chunk)[0]

        _, state = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), state))
        return state, start + steps * size

    def _check_ids_rank(self, ids, name):
        if ids.shape.rank != 2 or not ids.dtype.is_integer:
            raise ValueError(f"{name} must be integer ids [batch, events], got {ids.dtype.name} "
                             f"of shape {ids.shape}.")

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in _ARGUMENTS})
        config["output"] = self.output_form
        return config


__all__ = [
    "ENCODER_OUTPUTS",
    "STATE_COUNT",
    "STATE_NEWEST",
    "PADDINGS",
    "SequenceEncoder",
    "check_padding",
    "embedding_initializer",
    "find_padding_errors",
    "padding_error_message",
]
