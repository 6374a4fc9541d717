"""Which sequence encoders have a constant-size state per user, and why the others do not.

Pure Python (no TensorFlow, no Keras), shared by the tf-keras encoder
(:class:`tfrs_linear.layers.SequenceEncoder`) and the Keras 3 one
(:class:`tfrs_linear.keras3.SequenceEncoder`), so that both stream under the same rule and
refuse with the same words (docs/streaming.md, "Which models stream").
"""


def why_not_streamable(attention, causal, has_memory, positions):
    """None when an encoder so configured streams, else the reason it cannot (a sentence
    without its final period).

    Args:
      attention: ``"softmax"``, ``"linrec"`` or ``"elastic"``.
      causal: whether position ``t`` sees positions ``<= t`` only.
      has_memory: whether an interest memory starts the blocks (non-causal only).
      positions: ``"from_end"``, ``"from_start"`` or ``"none"``.
    """
    if attention == "softmax":
        return ("softmax attention has no constant-size state: each new event attends "
                "every earlier key, a key/value cache that grows with the history")
    if not causal or has_memory:
        return ("a non-causal encoder has no per-user state: every position sees the "
                "whole sequence, so a new event changes every earlier output")
    if positions == "from_end":
        return ("positions='from_end' counts positions from the newest item, so a new "
                "event moves every older event's position; use positions='from_start' "
                "or 'none' to stream")
    return None


def _why_not(encoder):
    return why_not_streamable(encoder.attention, encoder.causal, encoder.memory is not None,
                              encoder.positions)


def is_streamable(encoder):
    """Whether ``encoder`` (either package's ``SequenceEncoder``) has a constant-size
    state per user."""
    return _why_not(encoder) is None


def check_streamable(encoder):
    """Raises the ``ValueError`` of :func:`why_not_streamable` for ``encoder`` (either
    package's ``SequenceEncoder``), or one saying that it must be built first."""
    why = _why_not(encoder)
    if why:
        raise ValueError(f"SequenceEncoder(attention={encoder.attention!r}, causal="
                         f"{encoder.causal}, positions={encoder.positions!r}): {why}.")
    if not encoder.built:
        raise ValueError("SequenceEncoder.initial_state/step/encode_state need a built "
                         "encoder (call or build it first).")
