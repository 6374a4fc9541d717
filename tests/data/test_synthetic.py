"""The synthetic data set of ``tfrs_linear.data.synthetic``: seeded, sized, multi-interest."""

import numpy as np

import tfrs_linear  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tf.keras is touched)
from tfrs_linear import data
from tfrs_linear.data import synthetic
from tests.data.common import as_lists


def test_synthetic_is_deterministic_and_sane():
    kwargs = dict(num_users=40, num_items=80, num_interests=8, median_length=30, max_length=200)
    one = synthetic.generate(seed=5, **kwargs)
    two = synthetic.generate(seed=5, **kwargs)
    other = synthetic.generate(seed=6, **kwargs)
    assert as_lists(one) == as_lists(two)
    assert as_lists(one) != as_lists(other)
    assert set(one.users) == {str(u) for u in range(1, 41)}
    assert set(one.items) <= {str(i) for i in range(1, 81)}
    assert np.all(np.diff(one.timestamps) >= 0)  # merged in time order
    seq = data.build_sequences(one)
    assert seq.dropped_users == 0
    lengths = seq.lengths
    assert lengths.min() >= 20 and lengths.max() <= 200
    # Multi-interest: each user concentrates on a few clusters, so far fewer distinct
    # items than events for long users, but more than one cluster's worth.
    longest = int(np.argmax(lengths))
    assert 10 < len(np.unique(seq.sequences[longest])) < lengths[longest]


def test_synthetic_default_size():
    inter = synthetic.generate()
    seq = data.build_sequences(inter)
    assert seq.num_users == 1500 and seq.num_items - 2 <= 1000
    assert 100 <= np.median(seq.lengths) <= 200 and seq.lengths.max() >= 1500
