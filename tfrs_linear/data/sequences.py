"""Per-user sequences under one vocabulary, and the leave-one-out splits (docs/protocol.md).

:func:`build_sequences` sorts each user's events by timestamp, ties kept in file order
(a stable sort on the line order), drops users with fewer than ``min_events`` events
(counted), and indexes the items: 0 = ``[PAD]``, 1 = ``[OOV]``, then every item that
occurs in the kept users' sequences, by descending frequency in the training part
(each sequence without its last 2 events), ties by the raw id's string order (``"10"``
before ``"9"``). Items seen only as validation/test targets have frequency 0 and come
last in that same tie order, so every target has an index; the catalogue is
``2 .. len(vocab) - 1``. Items that occur only in the events of dropped users are not
part of the vocabulary (as in RecBole, which re-indexes after filtering).

Leave-one-out (:class:`SequenceData`'s ``histories``/``targets``): the last event is the
test target, the second-to-last the validation target; the validation history is
``seq[:-2]`` (the training part), the test history ``seq[:-1]`` (it includes the
validation item).
"""

import dataclasses

import numpy as np

from tfrs_linear.constants import NUM_RESERVED, OOV, PAD, SPLITS
from tfrs_linear.data.readers import DataError


@dataclasses.dataclass
class SequenceData:
    """Per-user, time-ordered item sequences under one vocabulary.

    Attributes:
      users: raw user ids of the kept users, in string order.
      sequences: one ``np.int32`` array of vocabulary indices per user (whole history,
        oldest first), parallel to ``users``.
      vocab: ``vocab[i]`` = raw id of index ``i``; ``vocab[0] = "[PAD]"``,
        ``vocab[1] = "[OOV]"``.
      item_popularity: ``np.int64 [len(vocab)]`` counts over the training part.
      dropped_users: users dropped for having fewer than ``min_events`` events.
      dropped_interactions: the events of those users.
      source: where the data came from.
    """

    users: list
    sequences: list
    vocab: list
    item_popularity: np.ndarray
    dropped_users: int = 0
    dropped_interactions: int = 0
    source: str = ""

    @property
    def num_items(self):
        """The vocabulary size, ``len(vocab)`` (padding and OOV included)."""
        return len(self.vocab)

    @property
    def num_users(self):
        """How many users were kept."""
        return len(self.users)

    @property
    def num_interactions(self):
        """The events of the kept users."""
        return int(sum(len(s) for s in self.sequences))

    @property
    def lengths(self):
        """``np.int64 [num_users]``: the length of every whole sequence."""
        return np.asarray([len(s) for s in self.sequences], dtype=np.int64)

    def history(self, user, split):
        """The history of user number ``user`` for ``split`` (see :meth:`histories`)."""
        seq = self.sequences[user]
        check_split(split)
        return seq[:-1] if split == "test" else seq[:-2]

    def target(self, user, split):
        """The leave-one-out target of user number ``user``: ``seq[-2]``/``seq[-1]``."""
        check_split(split, ("valid", "test"))
        seq = self.sequences[user]
        return int(seq[-1] if split == "test" else seq[-2])

    def histories(self, split):
        """Per-user histories: ``seq[:-2]`` for "train" and "valid", ``seq[:-1]`` for "test"."""
        check_split(split)
        cut = 1 if split == "test" else 2
        return [s[:-cut] for s in self.sequences]

    def targets(self, split):
        """``np.int32 [num_users]``: ``seq[-2]`` for "valid", ``seq[-1]`` for "test"."""
        check_split(split, ("valid", "test"))
        pos = -1 if split == "test" else -2
        return np.asarray([s[pos] for s in self.sequences], dtype=np.int32)

    def describe(self):
        """One line for logs: users, items, interactions, length median and max, and the drops."""
        lengths = self.lengths
        return (
            f"{self.source or 'data'}: {self.num_users} users, {self.num_items - NUM_RESERVED} items, "
            f"{int(lengths.sum())} interactions (length median {int(np.median(lengths)) if len(lengths) else 0}, "
            f"max {int(lengths.max()) if len(lengths) else 0}); dropped {self.dropped_users} users "
            f"with {self.dropped_interactions} interactions"
        )


def check_split(split, allowed=SPLITS):
    """Raises ``ValueError`` unless ``split`` is one of ``allowed`` (default: every split).

    Args:
      split: ``"train"``, ``"valid"`` or ``"test"``.
      allowed: the splits the caller accepts.
    """
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def build_sequences(interactions, min_events=3):
    """Groups events into per-user sequences and builds the vocabulary (module docstring).

    Args:
      interactions: :class:`Interactions`.
      min_events: users with fewer events are dropped (and counted); at least 3, which
        leave-one-out needs (one training event, a validation and a test target).
    """
    if int(min_events) < 3:
        raise ValueError(f"min_events must be >= 3 for leave-one-out, got {min_events}")
    source = interactions.source or "interactions"
    users, items, ts = interactions.users, interactions.items, interactions.timestamps
    if not np.all(np.isfinite(ts)):
        bad = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise DataError(f"{source}: event {bad + 1} has a non-finite timestamp {ts[bad]}")
    for reserved in (PAD, OOV):
        if len(items) and np.any(items == reserved):
            raise DataError(f"{source}: the raw item id {reserved!r} is reserved for the vocabulary")
    user_ids, user_of = np.unique(users, return_inverse=True)
    user_of = user_of.reshape(-1)
    order = np.lexsort((np.arange(len(users)), ts, user_of))  # stable: ties in file order
    counts = np.bincount(user_of, minlength=len(user_ids))
    keep = counts >= int(min_events)
    sorted_user = user_of[order]
    kept_events = keep[sorted_user]
    order = order[kept_events]
    sorted_user = sorted_user[kept_events]
    kept_counts = counts[keep]
    ends = np.cumsum(kept_counts)
    # Events from the end of their user's sequence: 0 = test target, 1 = validation.
    from_end = np.repeat(ends, kept_counts) - np.arange(len(order)) - 1
    train = from_end >= 2
    raw_items, item_of = np.unique(items[order], return_inverse=True)
    item_of = item_of.reshape(-1)
    freq = np.bincount(item_of[train], minlength=len(raw_items))
    by_rank = np.argsort(-freq, kind="stable")  # raw_items is in string order: ties by id
    index_of = np.empty(len(raw_items), dtype=np.int64)
    index_of[by_rank] = np.arange(NUM_RESERVED, NUM_RESERVED + len(raw_items))
    vocab = [PAD, OOV] + [str(x) for x in raw_items[by_rank]]
    popularity = np.zeros(len(vocab), dtype=np.int64)
    popularity[NUM_RESERVED:] = freq[by_rank]
    flat = index_of[item_of].astype(np.int32)
    sequences = np.split(flat, ends[:-1]) if len(ends) else []
    return SequenceData(
        users=[str(u) for u in user_ids[keep]],
        sequences=sequences,
        vocab=vocab,
        item_popularity=popularity,
        dropped_users=int((~keep).sum()),
        dropped_interactions=int(counts[~keep].sum()),
        source=interactions.source,
    )
