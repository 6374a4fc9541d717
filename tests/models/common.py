"""Helpers shared by the tests of models and training: a tiny configuration and data set."""

from tfrs_linear import data as data_lib
from tfrs_linear.data import synthetic

# A tiny model and run: the ModelConfig and the TrainConfig fields, apart.
TINY_MODEL = dict(max_len=12, d_model=16, num_layers=1, num_heads=2, ffn_dim=32, num_negatives=8)
TINY_TRAIN = dict(batch_size=8, eval_batch_size=16, epochs=2, patience=3, seed=1)


def tiny_sequences():
    """40 synthetic users over 30 items, 6-40 events each."""
    interactions = synthetic.generate(num_users=40, num_items=30, num_interests=5, median_length=20,
                                      min_length=6, max_length=40, seed=3)
    return data_lib.build_sequences(interactions)
