"""Per-user sequences under one vocabulary, and the leave-one-out splits (docs/protocol.md).

:func:`build_sequences` drops exact duplicates (the same user, item and timestamp: every
occurrence after the first, counted; ``keep_duplicates=True`` keeps them), sorts each
user's events by timestamp, ties kept in file order (a stable sort on the line order),
drops users with fewer than ``min_events`` events
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

A doubled file (every row twice) left as it is makes each test target equal to the item
just before it, and every model that repeats the last item scores HR@1 = 1:
:meth:`SequenceData.repeated_target_share` measures that share and
:meth:`SequenceData.describe` warns above :data:`REPEATED_TARGET_WARNING`.
"""

import dataclasses

import numpy as np

from tfrs_linear.constants import NUM_RESERVED, OOV, PAD, SPLITS
from tfrs_linear.data.readers import DataError

# describe() warns when more than this share of the validation or test targets equals the
# item just before it (natural data without repeat consumption is near 1 / catalogue size).
REPEATED_TARGET_WARNING = 0.25


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
      dropped_duplicates: exact duplicate events dropped (same user, item and timestamp),
        counted before the users with fewer than ``min_events`` events.
      keep_duplicates: whether exact duplicates were kept (``build_sequences``'s setting).
    """

    users: list
    sequences: list
    vocab: list
    item_popularity: np.ndarray
    dropped_users: int = 0
    dropped_interactions: int = 0
    source: str = ""
    dropped_duplicates: int = 0
    keep_duplicates: bool = False

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

    def repeated_target_share(self, split):
        """The share of users whose ``split`` target equals the last item of its history.

        Args:
          split: ``"valid"`` or ``"test"``.

        Returns:
          A float in [0, 1]; 0.0 without users.
        """
        check_split(split, ("valid", "test"))
        pos = -1 if split == "test" else -2
        same = [int(s[pos]) == int(s[pos - 1]) for s in self.sequences]
        return float(np.mean(same)) if same else 0.0

    def warning(self):
        """The data's warning line (see :meth:`describe`), or None."""
        shares = {split: self.repeated_target_share(split) for split in ("valid", "test")}
        if max(shares.values()) <= REPEATED_TARGET_WARNING:
            return None
        split = max(shares, key=shares.get)
        name = {"valid": "validation", "test": "test"}[split]
        return (
            f"warning: {shares[split]:.0%} of the {name} targets equal the item just before "
            f"them (validation {shares['valid']:.0%}, test {shares['test']:.0%}): repeating the "
            "last item scores that share as HR@1, so the metrics measure repetition, not "
            "recommendation; check the file for repeated rows (expected only where users "
            "really consume an item again and again)"
        )

    def describe(self):
        """Text for logs: one line (users, items, interactions, length median and max, the
        drops), then the :meth:`warning` line if there is one."""
        lengths = self.lengths
        median, longest = (int(np.median(lengths)), int(lengths.max())) if len(lengths) else (0, 0)
        line = (
            f"{self.source or 'data'}: {self.num_users} users, "
            f"{self.num_items - NUM_RESERVED} items, {int(lengths.sum())} interactions (length "
            f"median {median}, max {longest}); dropped {self.dropped_users} users "
            f"with {self.dropped_interactions} interactions, {self.dropped_duplicates} exact "
            "duplicate events"
        )
        warning = self.warning()
        return line if warning is None else f"{line}\n{warning}"


def check_split(split, allowed=SPLITS):
    """Raises ``ValueError`` unless ``split`` is one of ``allowed`` (default: every split).

    Args:
      split: ``"train"``, ``"valid"`` or ``"test"``.
      allowed: the splits the caller accepts.
    """
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def build_sequences(interactions, min_events=3, keep_duplicates=False):
    """Groups events into per-user sequences and builds the vocabulary (module docstring).

    Args:
      interactions: :class:`Interactions`.
      min_events: users with fewer events are dropped (and counted); at least 3, which
        leave-one-out needs (one training event, a validation and a test target).
      keep_duplicates: keep exact duplicates (same user, item and timestamp) instead of
        dropping every occurrence after the first (counted in ``dropped_duplicates``).

    Raises:
      DataError: a non-finite timestamp, a reserved item id, or no user with
        ``min_events`` events.
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
    first = np.arange(len(users)) if keep_duplicates else first_occurrences(user_of, items, ts)
    duplicates = len(users) - len(first)
    user_of, items, ts = user_of[first], items[first], ts[first]
    order = np.lexsort((first, ts, user_of))  # stable: ties in file order
    counts = np.bincount(user_of, minlength=len(user_ids))
    keep = counts >= int(min_events)
    if not keep.any():
        dups = f", {duplicates} exact duplicates dropped" if duplicates else ""
        raise DataError(
            f"{source}: no user has {int(min_events)} or more events ({len(user_ids)} users, "
            f"{len(users)} events read{dups}); leave-one-out needs a training event, a "
            "validation and a test target per user"
        )
    sorted_user = user_of[order]
    kept_events = keep[sorted_user]
    order = order[kept_events]
    kept_counts = counts[keep]
    ends = np.cumsum(kept_counts)
    # Events from the end of their user's sequence: 0 = test target, 1 = validation.
    from_end = np.repeat(ends, kept_counts) - np.arange(len(order)) - 1
    vocab, popularity, flat = _vocabulary(items[order], from_end >= 2)
    return SequenceData(
        users=[str(u) for u in user_ids[keep]],
        sequences=np.split(flat, ends[:-1]),
        vocab=vocab,
        item_popularity=popularity,
        dropped_users=int((~keep).sum()),
        dropped_interactions=int(counts[~keep].sum()),
        source=interactions.source,
        dropped_duplicates=int(duplicates),
        keep_duplicates=bool(keep_duplicates),
    )


def first_occurrences(user_of, items, timestamps):
    """The sorted positions of the first occurrence of every (user, item, timestamp).

    Args:
      user_of: ``int [n]`` user codes.
      items: ``[n]`` raw item ids.
      timestamps: ``float64 [n]`` (``-0.0`` and ``0.0`` are the same time).
    """
    if not len(user_of):
        return np.zeros(0, dtype=np.int64)
    item_of = np.unique(items, return_inverse=True)[1].reshape(-1)
    time_of = np.unique(timestamps + 0.0, return_inverse=True)[1].reshape(-1)
    keys = np.stack([np.asarray(user_of, np.int64), item_of, time_of], axis=1)
    return np.sort(np.unique(keys, axis=0, return_index=True)[1])


def _vocabulary(items, train):
    """(vocab, popularity, int32 indices of ``items``): the protocol's vocabulary order.

    Args:
      items: the raw ids of the kept events, in sequence order.
      train: bool mask of the events in the training part.
    """
    raw_items, item_of = np.unique(items, return_inverse=True)
    item_of = item_of.reshape(-1)
    freq = np.bincount(item_of[train], minlength=len(raw_items))
    by_rank = np.argsort(-freq, kind="stable")  # raw_items is in string order: ties by id
    index_of = np.empty(len(raw_items), dtype=np.int64)
    index_of[by_rank] = np.arange(NUM_RESERVED, NUM_RESERVED + len(raw_items))
    vocab = [PAD, OOV] + [str(x) for x in raw_items[by_rank]]
    popularity = np.zeros(len(vocab), dtype=np.int64)
    popularity[NUM_RESERVED:] = freq[by_rank]
    return vocab, popularity, index_of[item_of].astype(np.int32)
