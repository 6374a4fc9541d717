"""Keras 3 `SequenceEncoder`: the query tower of a sequential retrieval model."""

import keras
import numpy as np
from keras import ops

from tfrs_linear.constants import PAD_INDEX, POSITIONS, STATE_COUNT, STATE_NEWEST
from tfrs_linear.streamability import check_streamable, is_streamable
from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3 import _portable as P
from tfrs_linear.keras3.dropout import CounterDropout
from tfrs_linear.keras3.memory import InterestMemory
from tfrs_linear.keras3.transformer import TransformerBlock


def embedding_initializer():
    """Item and position embeddings: N(0, 0.02), as in SASRec/RecBole."""
    return keras.initializers.RandomNormal(stddev=0.02)


def _as_is(value):
    return value


# The encoder's configuration, in get_config()'s order: argument -> how it is stored.
_ARGUMENTS = {
    "vocab_size": int, "max_len": int, "d_model": int, "num_layers": int, "num_heads": int,
    "ffn_dim": int, "attention": _as_is, "causal": bool, "dropout": float,
    "attention_dropout": float, "layer_norm_epsilon": float, "normalization": _as_is,
    "chunk_size": int, "num_interests": int, "recency_bias": bool, "use_memory": bool,
    "memory_keys": int, "memory_top_m": int, "positions": _as_is,
}


@C.register
class SequenceEncoder(keras.layers.Layer):
    """Item ids ``[batch, L]`` (int, 0 = padding, left-padded, ``L <= max_len``) ->
    ``[batch, L, d]``.

    The Keras 3 twin of :class:`tfrs_linear.layers.SequenceEncoder`, with the same
    arguments, defaults and configuration: ``embed -> + learned position -> LayerNorm ->
    dropout -> num_layers TransformerBlocks`` (``"softmax"``, ``"linrec"`` or
    ``"elastic"``); padded positions output 0. ``encoder(ids, last_only=True)`` returns
    the newest position only, ``[batch, 1, d]``, equal to ``encoder(ids)[:, -1:]``. It
    computes at the input's width: a row gives the same states at any width that holds it
    (the newest item takes the last position embedding; padding is masked), so batches
    of short histories may be cut to fewer columns (one compilation per width).
    Non-causal ELASTIC blocks hand their interests on (only the block that starts the
    chain has tokens of its own; with ``use_memory`` an :class:`InterestMemory` starts
    it). ``item_embedding`` shares an existing ``keras.layers.Embedding`` (e.g. with a
    tied candidate tower); it is not part of the configuration.

    ``positions``: the learned position embedding, as on the tf-keras encoder:
    ``"from_end"`` (default; the newest item takes row ``max_len - 1``), ``"from_start"``
    (row ``i`` is the row's ``i``-th real item, rows past ``max_len - 1`` share the last)
    or ``"none"`` (no position embedding). With ``"from_start"`` or ``"none"`` a causal
    LinRec or ELASTIC encoder streams: :meth:`initial_state` and :meth:`step` keep a
    constant-size state per user and give the user embedding after each new event.
    """

    def __init__(self, vocab_size, max_len, d_model=64, num_layers=2, num_heads=2,
                 ffn_dim=256, attention="linrec", causal=True, dropout=0.2,
                 attention_dropout=0.2, layer_norm_epsilon=1e-12, normalization="paper",
                 chunk_size=32, num_interests=16, recency_bias=False, use_memory=False,
                 memory_keys=128, memory_top_m=8, item_embedding=None, positions="from_end",
                 **kwargs):
        super().__init__(**kwargs)
        arguments = locals()
        for name, cast in _ARGUMENTS.items():
            setattr(self, name, cast(arguments[name]))
        if self.use_memory and (self.attention != "elastic" or self.causal):
            raise ValueError("use_memory needs attention='elastic' and a non-causal encoder.")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
        policy = self.dtype_policy
        self.item_embedding = item_embedding or keras.layers.Embedding(
            self.vocab_size, self.d_model, embeddings_initializer=embedding_initializer(),
            dtype=policy, name="item_embedding")
        self.position_embedding = None
        if self.positions != "none":
            self.position_embedding = keras.layers.Embedding(
                self.max_len, self.d_model, embeddings_initializer=embedding_initializer(),
                dtype=policy, name="position_embedding")
        self.input_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="input_norm")
        self.input_dropout = CounterDropout(self.dropout, dtype=policy)
        self.blocks = [self._make_block(i) for i in range(self.num_layers)]
        self.memory = None
        if self.use_memory:
            self.memory = InterestMemory(
                num_interests=self.num_interests, num_keys=self.memory_keys,
                top_m=self.memory_top_m, dtype=policy, name="interest_memory")

    @property
    def hands_off_interests(self):
        """Whether the blocks hand ELASTIC's interests on (non-causal ELASTIC)."""
        return self.attention == "elastic" and not self.causal

    def _make_block(self, i):
        starts_chain = i == 0 and not self.use_memory
        return TransformerBlock(
            num_heads=self.num_heads, ffn_dim=self.ffn_dim, attention=self.attention,
            causal=self.causal, dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            layer_norm_epsilon=self.layer_norm_epsilon, normalization=self.normalization,
            chunk_size=self.chunk_size, num_interests=self.num_interests,
            learned_interests=not self.hands_off_interests or starts_chain,
            recency_bias=self.recency_bias, dtype=self.dtype_policy, name=f"block_{i}")

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"item_ids must be [batch, length], got shape {input_shape}.")
        shape = (input_shape[0], self.max_len, self.d_model)
        if not self.item_embedding.built:
            self.item_embedding.build(tuple(input_shape))
        if self.position_embedding is not None:
            self.position_embedding.build((self.max_len,))
        self.input_norm.build(shape)
        for block in self.blocks:
            block.build(shape)
        if self.memory is not None:
            self.memory.build(shape)

    def _check_ids(self, item_ids):
        if len(item_ids.shape) != 2:
            raise ValueError(
                f"item_ids must be [batch, length], got shape {tuple(item_ids.shape)}.")
        if item_ids.shape[1] is not None and item_ids.shape[1] > self.max_len:
            raise ValueError(
                f"item_ids are {item_ids.shape[1]} long, longer than max_len={self.max_len}: "
                f"keep each user's newest {self.max_len} items.")

    def _embed(self, item_ids, mask, training):
        """Item + position embeddings, LayerNorm, dropout; padded positions are 0."""
        x = self.item_embedding(item_ids)
        if self.positions == "from_end":
            width = item_ids.shape[1] if item_ids.shape[1] is not None else ops.shape(
                item_ids)[1]
            # The newest item (the last column) takes row max_len - 1, whatever the width.
            rows = ops.arange(self.max_len - width, self.max_len)[None]
        elif self.positions == "from_start":
            rows = self._rows_from_start(0, ops.cast(mask, "float32"))
        if self.positions != "none":
            x = x + ops.cast(self.position_embedding(rows), x.dtype)
        x = self.input_dropout(self.input_norm(x), training=training)
        return x * ops.cast(mask, x.dtype)[:, :, None]

    def call(self, item_ids, training=None, last_only=False):
        item_ids = ops.convert_to_tensor(item_ids)
        self._check_ids(item_ids)
        mask = ops.not_equal(item_ids, PAD_INDEX)
        x = self._embed(item_ids, mask, training)
        interests = None
        if self.memory is not None:
            interests = self.memory(x, mask=mask)
        for i, block in enumerate(self.blocks):
            last = bool(last_only) and i == len(self.blocks) - 1
            if self.hands_off_interests:
                x, interests = block(x, mask=mask, training=training, interests=interests,
                                     return_interests=True, last_only=last)
            else:
                x = block(x, mask=mask, training=training, last_only=last)
        return x

    def compute_mask(self, inputs, mask=None):
        return None

    def _rows_from_start(self, seen, real):
        """The position rows of ``positions="from_start"``: ``seen`` events before, then
        the ``[B, m]`` float 0/1 ``real`` ones (row ``i`` for a user's ``i``-th event)."""
        index = ops.cast(seen + P.cumsum(real, axis=1), "int32") - 1
        return ops.clip(index, 0, self.max_len - 1)

    # -- streaming: a constant-size state per user ---------------------------------------
    @property
    def streamable(self):
        """Whether the encoder has a constant-size per-user state: causal LinRec or
        ELASTIC blocks, no interest memory, positions ``"from_start"`` or ``"none"``
        (:func:`tfrs_linear.streamability.is_streamable`)."""
        return is_streamable(self)

    def _check_streamable(self):
        check_streamable(self)

    def initial_state(self, batch):
        """The state of ``batch`` users with no event yet: ``{name: float32 array}`` of
        fixed shapes, the keys of the tf-keras encoder's: ``"count"`` ``[B]`` (events
        seen), ``"newest_output"`` ``[B, d]`` (the user embedding) and each block's
        attention state as ``"block_<i>.<name>"``."""
        self._check_streamable()
        state = {STATE_COUNT: ops.zeros((batch,), "float32"),
                 STATE_NEWEST: ops.zeros((batch, self.d_model), "float32")}
        for i, block in enumerate(self.blocks):
            for name, value in block.initial_state(batch).items():
                state[f"block_{i}.{name}"] = value
        return state

    def step(self, state, new_ids):
        """Feeds ``m`` new events per user; returns ``(new_state, user_embedding)``.

        ``new_ids`` int ``[B, m]``: the new items, oldest first, RIGHT-padded with 0 (rows
        may add different numbers of events; a row of zeros keeps its state and
        embedding). ``user_embedding [B, d]`` float32 is the output at each user's newest
        event: what ``call(..., last_only=True)`` gives on the whole history (counted from
        the state's first event), for any history length, in ``O(m)`` per call. A whole
        history in one step from :meth:`initial_state` is the prefill. Inference only.
        """
        self._check_streamable()
        new_ids = ops.convert_to_tensor(new_ids)
        self._check_new_ids(new_ids)
        self._check_state_keys(state)
        state = {name: ops.convert_to_tensor(value) for name, value in state.items()}
        real = ops.not_equal(new_ids, PAD_INDEX)
        realf = ops.cast(real, "float32")
        added = ops.sum(realf, axis=1)
        x = self.item_embedding(new_ids)
        if self.positions == "from_start":
            rows = self._rows_from_start(state[STATE_COUNT][:, None], realf)
            x = x + ops.cast(self.position_embedding(rows), x.dtype)
        x = self.input_norm(x) * ops.cast(realf, x.dtype)[:, :, None]
        new_state = {}
        for i, block in enumerate(self.blocks):
            prefix = f"block_{i}."
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            own, x = block.step(own, x, real)
            new_state.update({prefix + k: v for k, v in own.items()})
        newest = ops.maximum(ops.cast(added, "int32") - 1, 0)
        last = ops.take_along_axis(x, newest[:, None, None], axis=1)[:, 0]
        user = ops.where(added[:, None] > 0, ops.cast(last, "float32"), state[STATE_NEWEST])
        new_state[STATE_COUNT] = state[STATE_COUNT] + added
        new_state[STATE_NEWEST] = user
        return new_state, user

    def _check_state_keys(self, state):
        """The encoder's own keys, and no key of no block (each block's attention checks
        its ``block_<i>.`` keys itself): plain Python, nothing computed per step."""
        own = {STATE_COUNT, STATE_NEWEST}
        prefixes = tuple(f"block_{i}." for i in range(len(self.blocks)))
        if (not isinstance(state, dict) or not own <= set(state)
                or any(k not in own and not k.startswith(prefixes) for k in state)):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"SequenceEncoder.step: the state has the keys {sorted(own)} and each "
                f"block's 'block_<i>.<name>' (i < {len(self.blocks)}), got {got} (use "
                "initial_state or a previous step's state).")

    def encode_state(self, item_ids):
        """The state after whole histories, in one parallel pass: ``(state,
        user_embedding)``.

        ``item_ids`` int ``[B, L]`` LEFT-padded as :meth:`call` takes them, of any length
        (not only up to ``max_len``: with ``positions="from_start"`` the events past
        ``max_len`` share the last position row, as in :meth:`step`). The blocks run
        causally over the whole history (their chunked forms, linear in ``L``) and each
        block's state comes from its inputs (``advance``); the result equals
        :meth:`step` from :meth:`initial_state` over the same events. Memory grows with
        ``B x L`` (every event's activations); feed very long histories by :meth:`step`.
        """
        self._check_streamable()
        item_ids = ops.convert_to_tensor(item_ids)
        self._check_new_ids(item_ids, "item_ids", "left")
        mask = ops.not_equal(item_ids, PAD_INDEX)
        x = self._embed(item_ids, mask, training=False)
        batch = ops.shape(item_ids)[0]
        state = {}
        for i, block in enumerate(self.blocks):
            own = block.advance(block.initial_state(batch), x, mask)
            state.update({f"block_{i}.{k}": v for k, v in own.items()})
            # (A new tensor without the Keras mask the block's call attached: the next
            # block's advance feeds it to Dense layers, which would warn about it.)
            x = block(x, mask=mask, training=False) * ops.cast(mask, x.dtype)[:, :, None]
        state[STATE_COUNT] = ops.sum(ops.cast(mask, "float32"), axis=1)
        state[STATE_NEWEST] = ops.cast(x[:, -1], "float32")  # 0 for a row without events
        return state, state[STATE_NEWEST]

    def _check_new_ids(self, ids, what="new_ids", padding="right"):
        """``ids`` must be int ``[B, m]`` padded on ``padding``'s side (checked where its
        values are known: eagerly, not inside a compiled function)."""
        if len(ids.shape) != 2 or "int" not in str(keras.backend.standardize_dtype(
                ids.dtype)):
            raise ValueError(f"{what} must be int [batch, events], got shape "
                             f"{tuple(ids.shape)} of {ids.dtype}.")
        try:
            values = np.asarray(ops.convert_to_numpy(ids))
        except Exception:  # a traced tensor (jit, tf.function): values unknown here
            return
        real = values != PAD_INDEX
        after = (~real[:, :-1] & real[:, 1:]) if padding == "right" else (
            real[:, :-1] & ~real[:, 1:])
        wrong = np.flatnonzero(np.any(after, axis=1))
        if wrong.size:
            order = ("each row's items first, then 0s" if padding == "right" else
                     "0s first, then each row's items, newest last")
            raise ValueError(f"{what} must be {padding}-padded ({order}); rows "
                             f"{wrong[:5].tolist()} are not.")
