"""What ``check-serving`` expects of the streaming signatures ``encode_state`` and ``step``.

:func:`check_serving` replays every warmup record through the TF1 session; for the
streaming ones it asks this module what the Python model says (:func:`streaming_cases`)
and compares the served outputs with it:

* ``encode_state``: ``user_embedding`` against the model's ``encode_state`` of the same
  rows' indices, and against the model's ``encode`` of the row when the whole history fits
  in ``max_len`` (the dense encoder, independent of the step code); every state tensor
  against the model's ``encode_state``; ``recent_items`` (the newest ``R`` indices) and
  ``fingerprint`` exactly.
* ``step``: the history behind the request's state is the ``encode_state`` request whose
  replayed state the step was sent (the warmup builds its step requests that way).
  ``user_embedding`` is compared with the model's dense ``encode`` of history + new
  events (with the model's ``encode_state`` of them where they do not fit in ``max_len``:
  a dense encoder sees ``max_len`` events only); the top-k ``item_ids``/``scores``
  with the exact top-k of that embedding where, under history exclusion, the newest
  ``R`` items of history + new events score ``-inf``. A step whose state no
  ``encode_state`` request made is compared with the model's own ``step``.

Integer outputs (``recent_items``, ``fingerprint``) must match exactly; float outputs
within the check's tolerance.
"""

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from tfrs_linear.constants import NUM_RESERVED, OOV_INDEX, PAD_INDEX
from tfrs_linear.data import pad_left, vocabulary_lookup
from tfrs_linear.serving.streaming import STATE_FINGERPRINT, STATE_RECENT, STREAM_SIGNATURES
from tfrs_linear.serving.wire import decode_strings

USER = "user_embedding"
# How close a step request's state must be to a replayed encode_state output to be it.
_SAME_STATE_ATOL = 1e-6


@dataclass
class StreamCase:
    """One replayed streaming request and what the Python model says of it.

    Attributes:
      label: the request in the report (``warmup #n (step)``).
      signature: ``"encode_state"`` or ``"step"``.
      outputs: the served outputs ``{name: array}``.
      embeddings: ``[(what, rows, user)]``: the served ``user_embedding`` of ``rows``
        (a list of row numbers) must equal ``user[rows]`` (float32 ``[B, d]``), the
        reference ``what`` names.
      scores: ``step`` only: the reference scores float64 ``[B, V - 2]`` of the catalogue
        items, ``-inf`` where excluded (``None`` for ``encode_state``).
    """

    label: str
    signature: str
    outputs: dict
    embeddings: list = field(default_factory=list)
    scores: np.ndarray = None


def stream_info_problems(info, signatures):
    """Problems of a tfrs-linear export's streaming part: the export info records
    ``stream_history`` and ``fingerprint`` exactly when ``encode_state`` and ``step`` are
    served."""
    recorded = "stream_history" in info and "fingerprint" in info
    served = [s for s in STREAM_SIGNATURES if s in signatures]
    if recorded and len(served) < len(STREAM_SIGNATURES):
        missing = [s for s in STREAM_SIGNATURES if s not in signatures]
        return [f"the export info records streaming but the signatures {missing} are missing"]
    if served and not recorded:
        return [f"signatures {served} are served but the export info does not record "
                "stream_history and fingerprint"]
    return []


def _index_rows(item_ids, lookup):
    """A string matrix → lists of vocabulary indices ("" dropped, unknown/reserved → OOV)."""
    rows = []
    for row in np.asarray(item_ids):
        raw = [v for v in decode_strings(np.asarray(row)) if v != ""]
        rows.append([max(lookup.get(v, OOV_INDEX), OOV_INDEX) for v in raw])
    return rows


def _right_padded(rows):
    width = max([1] + [len(r) for r in rows])
    out = np.zeros([len(rows), width], np.int32)
    for r, row in enumerate(rows):
        out[r, :len(row)] = row
    return out


def newest_items(rows, width):
    """The newest ``width`` indices of each row, left-padded with 0: ``int32 [B, width]``
    (what ``recent_items`` holds)."""
    out = np.zeros([len(rows), width], np.int32)
    for r, row in enumerate(rows):
        newest = row[max(len(row) - width, 0):] if width else []
        out[r, width - len(newest):] = newest
    return out


def _streamed(model, rows):
    """The model's ``encode_state`` of index rows: ``(state {name: array}, user [B, d])``."""
    state, user = model.encode_state(tf.constant(_right_padded(rows)), padding="right")
    return {k: v.numpy() for k, v in state.items()}, user.numpy().astype(np.float32)


def _dense_or_state(model, rows, user):
    """``(user [B, d], dense_rows, state_rows)``: ``user`` (the model's ``encode_state``
    of ``rows``) with the rows that fit in ``max_len`` replaced by the model's dense
    ``encode`` of them; the others (longer, or empty) keep ``user``'s."""
    max_len = int(model.config.max_len)
    user = np.array(user, np.float32)
    dense_rows = [r for r, row in enumerate(rows) if 1 <= len(row) <= max_len]
    if dense_rows:
        padded = pad_left([rows[r] for r in dense_rows], max_len)
        user[dense_rows] = model.encode(padded, training=False).numpy()
    state_rows = [r for r in range(len(rows)) if r not in dense_rows]
    return user, dense_rows, state_rows


def _state_problems(label, outputs, reference, tolerance):
    problems = []
    for name, value in reference.items():
        got, want = np.asarray(outputs.get(name)), np.asarray(value)
        if got.shape != want.shape or not np.allclose(got, want, atol=tolerance, rtol=0):
            diff = np.max(np.abs(got - want)) if got.shape == want.shape else got.shape
            problems.append(f"{label}: state tensor {name} differs from the Python model's "
                            f"encode_state (max |diff| {diff})")
    return problems


def _int_problems(label, name, got, want):
    got = np.asarray(got)
    if got.shape != want.shape or not np.array_equal(got, want):
        return [f"{label}: {name} is {got.tolist()}, expected {want.tolist()}"]
    return []


def _encode_state_case(model, label, outputs, rows, info, tolerance):
    state, user = _streamed(model, rows)
    case = StreamCase(label, "encode_state", outputs)
    case.embeddings.append(("the Python model's encode_state", list(range(len(rows))), user))
    dense, dense_rows, _ = _dense_or_state(model, rows, user)
    if dense_rows:
        case.embeddings.append(("the Python model's encode (history within max_len)",
                                dense_rows, dense))
    problems = _state_problems(label, outputs, state, tolerance)
    problems += _int_problems(label, STATE_RECENT, outputs.get(STATE_RECENT),
                              newest_items(rows, int(info["stream_history"])))
    problems += _int_problems(label, STATE_FINGERPRINT, outputs.get(STATE_FINGERPRINT),
                              np.full([len(rows)], int(info["fingerprint"]), np.int64))
    return case, problems


def _same_state(inputs, outputs):
    for name, value in inputs.items():
        if name == "item_ids":
            continue
        got = outputs.get(name)
        if got is None or np.shape(got) != np.shape(value):
            return False
        if not np.allclose(got, value, atol=_SAME_STATE_ATOL, rtol=_SAME_STATE_ATOL):
            return False
    return True


def _step_reference(model, inputs, new_rows, history):
    """``(user, recent rows, what)`` of a step: dense re-encode of history + new events
    when the history is known, else the model's own step on the request's state."""
    if history is not None:
        full = [h + n for h, n in zip(history, new_rows)]
        user, dense_rows, state_rows = _dense_or_state(model, full, _streamed(model, full)[1])
        parts = [("a dense re-encode of history + new events", dense_rows),
                 ("the Python model's encode_state of history + new events", state_rows)]
        return user, full, [p for p in parts if p[1]]
    state = {k: tf.constant(v) for k, v in inputs.items()
             if k not in ("item_ids", STATE_FINGERPRINT, STATE_RECENT)}
    _, user = model.step(state, tf.constant(_right_padded(new_rows)))
    recent = [[i for i in row if i != PAD_INDEX] + new
              for row, new in zip(np.asarray(inputs[STATE_RECENT]).tolist(), new_rows)]
    return (user.numpy().astype(np.float32), recent,
            [("the Python model's step (no warmup request made this state)",
              list(range(len(new_rows))))])


def _step_case(model, label, inputs, outputs, lookup, history, info):
    new_rows = _index_rows(inputs["item_ids"], lookup)
    user, full, parts = _step_reference(model, inputs, new_rows, history)
    r = int(info["stream_history"])
    recent = newest_items(full, r)
    items = model.item_embeddings().numpy().astype(np.float64)
    scores = (user.astype(np.float64) @ items.T)[:, NUM_RESERVED:]
    if info["exclude_history"]:
        for row, newest in enumerate(recent):
            hit = [i - NUM_RESERVED for i in newest if i >= NUM_RESERVED]
            scores[row, hit] = -np.inf
    case = StreamCase(label, "step", outputs, [(w, rows, user) for w, rows in parts], scores)
    problems = _int_problems(label, STATE_RECENT, outputs.get(STATE_RECENT), recent)
    problems += _int_problems(label, STATE_FINGERPRINT, outputs.get(STATE_FINGERPRINT),
                              np.asarray(inputs[STATE_FINGERPRINT]))
    return case, problems, history is not None


def streaming_cases(model, vocab, results, info, tolerance):
    """What the Python model says of the replayed ``encode_state`` and ``step`` requests.

    Args:
      model: the Python model (``encode``, ``encode_state``, ``step``, ``item_embeddings``).
      vocab: its vocabulary.
      results: the replayed requests ``[(label, signature, inputs, outputs)]`` (others
        than the streaming ones are skipped).
      info: the export info (``k``, ``exclude_history``, ``stream_history``,
        ``fingerprint``).
      tolerance: the largest absolute difference of the state tensors.

    Returns:
      ``(cases, problems, summary)``: a :class:`StreamCase` per request, the problems
      found in the state tensors, ``recent_items`` and ``fingerprint``, and a report line.
    """
    lookup = vocabulary_lookup(vocab)
    cases, problems, encoded, dense = [], [], [], 0
    for label, signature, inputs, outputs in results:
        if signature == "encode_state":
            rows = _index_rows(inputs["item_ids"], lookup)
            case, found = _encode_state_case(model, label, outputs, rows, info, tolerance)
            encoded.append((rows, outputs))
        elif signature == "step":
            history = next((rows for rows, out in encoded if _same_state(inputs, out)), None)
            case, found, known = _step_case(model, label, inputs, outputs, lookup, history,
                                            info)
            dense += known
        else:
            continue
        cases.append(case)
        problems.extend(found)
    steps = sum(c.signature == "step" for c in cases)
    summary = (f"streaming: {len(cases) - steps} encode_state and {steps} step request(s) "
               f"compared (R = {info.get('stream_history')}, fingerprint "
               f"{info.get('fingerprint')}); {dense} of the {steps} step(s) against a "
               "re-encode of history + new events")
    return cases, problems, summary


__all__ = ["StreamCase", "newest_items", "stream_info_problems", "streaming_cases"]
