"""The streaming signatures of an export: ``encode_state`` and ``step`` (docs/streaming.md).

A streamable model (``ModelConfig.is_streamable``: causal LinRec or ELASTIC, positions
``"from_start"`` or ``"none"``) summarises a user's whole history in a state of fixed
size; a service keeps it per user (any key-value store) and sends it back with each new
event, and one ``step`` costs the same whatever the history's length.

* ``encode_state``: ``item_ids`` string ``[batch, length]`` (the whole history, raw ids,
  oldest first, right-padded with ``""``; any length) → the state tensors and
  ``user_embedding`` float32 ``[batch, d]``.
* ``step``: the state tensors (exactly ``encode_state``'s outputs but
  ``user_embedding``, same names) and ``item_ids`` string ``[batch, m]`` (the new events,
  right-padded with ``""``; a row of ``""`` adds nothing) → the new state under the same
  names, ``user_embedding``, and the exact top-k ``item_ids`` string ``[batch, k]`` and
  ``scores`` float32 ``[batch, k]``.

The state: the model's float32 tensors (:meth:`SequenceEncoder.initial_state`:
``count``, ``newest_output``, ``block_<i>.<name>``), plus

* ``fingerprint`` int64 ``[batch]``: the export's fingerprint (a hash of its weights and
  vocabulary). ``step`` refuses a state made by another export (after a redeploy its
  numbers mean nothing to the new weights): call ``encode_state`` again with the
  history;
* ``recent_items`` int32 ``[batch, R]``: the vocabulary indices of the user's newest
  ``R`` events (0 = none yet), newest last. With history exclusion (the export's
  default) ``step`` never recommends them; ``R`` is set at export
  (``--stream-history``) and is 0 without exclusion. Items older than the newest ``R``
  may come back: the state does not grow with the history.

Unknown ids and the reserved tokens are the OOV item, as in ``serving_default``. Plain
TF ops, never ``jit_compile``; ranks and state shapes are checked at run time with
messages naming the signature and the tensor.
"""

import hashlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import DEFAULT_STREAM_HISTORY, OOV_INDEX, PAD_INDEX
from tfrs_linear.serving.signatures import checked_rank

STATE_FINGERPRINT = "fingerprint"
STATE_RECENT = "recent_items"
STREAM_SIGNATURES = ("encode_state", "step")
_IDS_WHAT = ("a string matrix [batch, events] of raw item ids, oldest first, right-padded "
             "with empty strings")


def model_fingerprint(model, vocab_path):
    """A signed 64-bit hash of ``model``'s variables (names and values) and the vocabulary
    file: equal for two exports of the same weights and vocabulary, else different."""
    digest = hashlib.sha256()
    for variable in sorted(model.variables, key=lambda v: v.name):
        digest.update(variable.name.encode())
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    digest.update(Path(vocab_path).read_bytes())
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


def _newest(rows, width):
    """The newest ``width`` real entries of right- or left-padded int rows, left-padded."""
    real = tf.cast(tf.not_equal(rows, PAD_INDEX), tf.int32)
    order = tf.argsort(real, axis=1, stable=True)  # padding first, real entries in order
    rows = tf.gather(rows, order, batch_dims=1)
    rows = tf.pad(rows, [[0, 0], [width, 0]])
    rows = rows[:, tf.shape(rows)[1] - width:]
    rows.set_shape([None, width])
    return rows


def _appended(recent, indices, width):
    """The newest ``width`` items after ``indices [B, m]`` (right-padded) follow the
    left-padded ``recent [B, width]``: :func:`_newest` of the two, without its sort for
    one new event per row."""
    if indices.shape[1] != 1 or width == 0:
        return _newest(tf.concat([recent, indices], axis=1), width)
    shifted = tf.concat([recent[:, 1:], indices], axis=1)
    return tf.where(tf.not_equal(indices, PAD_INDEX), shifted, recent)


class StreamingSignatures:
    """Adds ``encode_state`` and ``step`` to a :class:`ServingSignatures` module.

    Args:
      model: the built, streamable ``SequentialRetrievalModel`` of ``serving``.
      serving: the export's :class:`~tfrs_linear.serving.signatures.ServingSignatures`
        (its lookup tables, ``k`` and history exclusion are shared).
      vocab_path: the vocabulary file (part of the fingerprint).
      history_size: ``R``, the newest items kept for history exclusion (0 without it).

    Raises:
      ValueError: the model is not streamable (the message says why), or ``R < 0``.
    """

    def __init__(self, model, serving, vocab_path, history_size=DEFAULT_STREAM_HISTORY):
        if int(history_size) < 0:
            raise ValueError(f"--stream-history must be >= 0, got {history_size}")
        self._model = model
        self._serving = serving
        self.history_size = int(history_size) if serving.exclude_history else 0
        self.fingerprint = model_fingerprint(model, vocab_path)
        example = model.initial_state(1)  # raises for a model without a constant state
        self.state_specs = {
            name: tf.TensorSpec([None] + value.shape[1:].as_list(), tf.float32, name=name)
            for name, value in example.items()
        }
        self.state_specs[STATE_FINGERPRINT] = tf.TensorSpec([None], tf.int64,
                                                            name=STATE_FINGERPRINT)
        self.state_specs[STATE_RECENT] = tf.TensorSpec([None, self.history_size], tf.int32,
                                                       name=STATE_RECENT)
        ids_spec = tf.TensorSpec([None, None], tf.string, name="item_ids")
        module = serving.module
        module.encode_state = tf.function(self.encode_state, input_signature=[ids_spec])
        module.step = tf.function(self.step, input_signature=[dict(self.state_specs), ids_spec])
        self._general_step = tf.function(self._step, experimental_attributes={"_noinline": True})

    def signatures(self):
        """``{"encode_state": ..., "step": ...}`` concrete functions."""
        module = self._serving.module
        return {"encode_state": module.encode_state.get_concrete_function(),
                "step": module.step.get_concrete_function()}

    # -- the signatures --------------------------------------------------------------
    def encode_state(self, item_ids):
        """Raw ids ``[B, L]`` (whole histories) → the state and ``user_embedding``."""
        item_ids = checked_rank(item_ids, 2, "encode_state", "item_ids", _IDS_WHAT)
        indices = self.indices(item_ids)
        state, user = self._model.encode_state(indices, padding="right")
        batch = tf.shape(indices)[0]
        state = dict(state)
        state[STATE_FINGERPRINT] = tf.fill([batch], tf.constant(self.fingerprint, tf.int64))
        state[STATE_RECENT] = _newest(indices, self.history_size)
        return {**state, "user_embedding": user}

    def step(self, state, item_ids):
        """The state and new raw ids ``[B, m]`` → the new state, ``user_embedding`` and
        the top-k ``item_ids``/``scores``."""
        item_ids = checked_rank(item_ids, 2, "step", "item_ids", _IDS_WHAT)
        state = self._checked_state(state)
        # One new event per user is what a streaming service sends. That branch is traced
        # with m = 1 known, so the layers take their single-event forms: 2-D MatMuls and
        # broadcast products instead of einsums (ops.contract), no sort of the events.
        # The general form is a function that is not inlined, so that when it is not
        # taken it is one dead node, not a few hundred. Batch-1 LinRec step, hot, C timer,
        # one run (2026-11-29): 0.79x the time of the general form alone (the step before
        # this branch) with the default thread pools, 0.89x with every op in the caller's
        # thread; ELASTIC 0.71x with the default pools.
        return tf.cond(tf.equal(tf.shape(item_ids)[1], 1),
                       lambda: self._step(state, tf.reshape(item_ids, [-1, 1])),
                       lambda: self._general_step(state, item_ids))

    def _step(self, state, item_ids):
        """:meth:`step` after its checks, for ``item_ids`` of any static width."""
        indices = self.indices(item_ids)
        model_state = {k: v for k, v in state.items()
                       if k not in (STATE_FINGERPRINT, STATE_RECENT)}
        new_state, user = self._model.step(model_state, indices)
        recent = _appended(state[STATE_RECENT], indices, self.history_size)
        history = None
        if self._serving.exclude_history:
            history = self._serving.history_mask(recent, tf.not_equal(recent, PAD_INDEX))
        top = self._serving.rank(user, history)
        return {**new_state, STATE_FINGERPRINT: state[STATE_FINGERPRINT],
                STATE_RECENT: recent, "user_embedding": user, **top}

    # -- the shared steps ------------------------------------------------------------
    def indices(self, item_ids):
        """Raw ids ``[B, L]`` → int32 indices, right-padded with 0 (``""`` anywhere in
        a row is padding and moves to its end; unknown and reserved ids are OOV)."""
        valid = tf.not_equal(item_ids, "")
        ids = tf.maximum(self._serving.module.index_table.lookup(item_ids), OOV_INDEX)
        ids = tf.where(valid, tf.cast(ids, tf.int32), tf.zeros_like(ids, tf.int32))
        if item_ids.shape[1] == 1:
            return ids
        order = tf.argsort(tf.cast(tf.logical_not(valid), tf.int32), axis=1, stable=True)
        return tf.gather(ids, order, batch_dims=1)

    def _checked_state(self, state):
        """The state after run-time checks: every tensor's shape, one batch size, and the
        fingerprint of this export.

        One vectorised check for all the shapes (one ``Assert``, not one per tensor: a
        batch-1 ``step`` is mostly per-op overhead, and 19 asserts were ~130 graph nodes).
        The message lists the tensors with a 0/1 flag each, so the wrong one is named.
        """
        names = list(self.state_specs)
        batch = tf.shape(state[STATE_FINGERPRINT])[0]
        want, is_batch, segment = [], [], []
        for i, name in enumerate(names):
            dims = [-1] + self.state_specs[name].shape[1:].as_list()
            want += dims
            is_batch += [True] + [False] * (len(dims) - 1)
            segment += [i] * len(dims)
        got = tf.concat([tf.shape(state[name]) for name in names], axis=0)
        expected = tf.where(tf.constant(is_batch), batch, tf.constant(want, tf.int32))
        right = tf.math.segment_min(tf.cast(tf.equal(got, expected), tf.int32),
                                    tf.constant(segment, tf.int32))
        shapes = ", ".join(f"{name} [batch] + {self.state_specs[name].shape[1:].as_list()}"
                           for name in names)
        checks = [tf.debugging.Assert(tf.reduce_all(right > 0), [
            f"step: each state tensor must be its shape with the batch of the others ({shapes}); "
            "pass encode_state's outputs back unchanged. Right (1) or wrong (0), in that "
            "order:", right, "got the shapes (concatenated, in that order):", got],
            summarize=len(want))]
        same = tf.reduce_all(tf.equal(state[STATE_FINGERPRINT],
                                      tf.constant(self.fingerprint, tf.int64)))
        # The fingerprints as strings: an Assert whose data are all strings or int32 is
        # one op; any other dtype wraps it in a cond of ~8 ops (Switch, Merge, ...).
        checks.append(tf.debugging.Assert(same, [
            "step: the state was made by another export (fingerprint mismatch: different "
            "weights or vocabulary). Call encode_state with the user's history on this "
            f"export (fingerprint {self.fingerprint}) to make a new state; got",
            tf.strings.as_string(state[STATE_FINGERPRINT])], summarize=3))
        names = list(state)
        with tf.control_dependencies(checks):
            # One IdentityN for all the tensors, not one Identity each.
            return dict(zip(names, tf.identity_n([state[name] for name in names])))


__all__ = [
    "DEFAULT_STREAM_HISTORY",
    "STATE_FINGERPRINT",
    "STATE_RECENT",
    "STREAM_SIGNATURES",
    "StreamingSignatures",
    "model_fingerprint",
]
