"""Constructor argument checks shared by the tf-keras layers (:mod:`tfrs_linear.layers`)
and their Keras 3 twins (:mod:`tfrs_linear.keras3`). Pure Python: importing it loads
neither TensorFlow nor Keras, so both layer families (and every Keras backend) use it.
"""


def check_interest_memory_args(num_interests, num_keys, top_m, query_dim):
    """Raises ``ValueError`` naming the argument unless the product-key memory's sizes fit.

    Args:
      num_interests: interests retrieved per sequence, >= 1.
      num_keys: sub-keys per half (the memory has ``num_keys²`` rows), >= 1.
      top_m: rows kept per half, in ``[1, num_keys]``.
      query_dim: query width, even and >= 2 (it is split into two halves).

    Returns:
      ``(num_interests, num_keys, top_m, query_dim)`` as ints.
    """
    if int(num_interests) < 1 or int(num_keys) < 1:
        raise ValueError(
            f"num_interests and num_keys must be >= 1, got {num_interests} and {num_keys}."
        )
    if not 1 <= int(top_m) <= int(num_keys):
        raise ValueError(f"top_m must be in [1, num_keys={num_keys}], got {top_m}.")
    if int(query_dim) < 2 or int(query_dim) % 2:
        raise ValueError(f"query_dim must be even and >= 2 (two halves), got {query_dim}.")
    return int(num_interests), int(num_keys), int(top_m), int(query_dim)
