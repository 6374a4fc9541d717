"""Configuration: what defines a model (:class:`ModelConfig`) and what defines a run
(:class:`TrainConfig`), in one flat key space on disk.

A trained model's ``config.json``, the ``--config`` files of ``tfrs-linear train``, the
reference configurations of the repository's ``models/`` folder and the TFX module's
``custom_config`` are all one flat JSON object whose keys are the fields of both classes
(no key belongs to both). The functions below translate between that flat form and the
pair ``(ModelConfig, TrainConfig)``::

    model_config, train_config = load_config("models/sasrec-ml100k.json")
    model_config, train_config = replace_config(model_config, train_config, epochs=3, d_model=128)
    save_config("runs/x/config.json", model_config, train_config)     # flat, keys sorted

``tfrs-linear train --config FILE`` loads one, explicit flags override it, and the
effective configuration is written to ``OUTPUT/config.json``. A new field goes into the
class it belongs to (a new one can never clash with an existing key of the other class);
a field that is also a :class:`~tfrs_linear.layers.SequenceEncoder` argument of the same
name is declared with ``encoder_field``; every field carries its help text (the
``--help`` of ``tfrs-linear train`` is generated from it, see :func:`config_field`).

Values are checked before anything is written: a wrong type is refused, never converted
(``{"max_len": "20"}`` is an error naming the key, the value and the expected type).
Fields that do nothing for the model (:meth:`ModelConfig.inapplicable_fields`, e.g.
``normalization`` of a softmax model) are not stored and not compared. Pure Python: no
TensorFlow is imported here.
"""

import dataclasses
import json
from pathlib import Path

from tfrs_linear.constants import (  # noqa: F401
    ATTENTIONS,
    LOSSES,
    LR_SCHEDULES,
    NORMALIZATIONS,
    OPTIMIZERS,
    POSITIONS,
    PRECISIONS,
    REGIMES,
)

# Values for keys a saved config.json may predate: what those models were trained with.
_SAVED_BEFORE_THE_OPTION = {"recency_bias": False, "positions": "from_end", "length_buckets": 1,
                            "bucket_window": 1}
# Keys of a configuration file that are notes for its readers, not configuration.
_NOTE_KEYS = ("_comment", "_reference")


def _check(cond, msg):
    if not cond:
        raise ValueError(f"invalid configuration: {msg}")


def _check_positive(config, names):
    for name in names:
        value = getattr(config, name)
        _check(int(value) >= 1, f"{name} must be >= 1, got {value}")


def config_field(default, help, choices=None, default_help=None, encoder=False):
    """A configuration field with its documentation, the one source of the field's
    ``--help`` text: ``help`` says what it means, ``choices`` lists the values it takes,
    ``default_help`` describes a ``None`` default (e.g. "by regime")."""
    metadata = {"help": help, "encoder": encoder}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if default_help is not None:
        metadata["default_help"] = default_help
    return dataclasses.field(default=default, metadata=metadata)


def encoder_field(default, help="", **kwargs):
    """A :class:`ModelConfig` field that is also the :class:`SequenceEncoder` argument of
    the same name (see :meth:`ModelConfig.encoder_kwargs`)."""
    return config_field(default, help, encoder=True, **kwargs)


def _expected_types(field):
    """The Python types a value of ``field`` may have (``None`` included when optional)."""
    annotation = field.type
    args = getattr(annotation, "__args__", None)
    return tuple(args) if args else (annotation,)


def _check_type(name, value, types):
    """Refuses a value of the wrong type, never converting it (``"20"`` is no int, ``True``
    no int, ``20.5`` no int; an int is a valid float)."""
    if isinstance(value, bool):
        ok = bool in types
    elif isinstance(value, int):
        ok = int in types or float in types
    else:
        ok = any(t is not type(None) and isinstance(value, t) for t in types) or (
            value is None and type(None) in types)
    if not ok:
        expected = " or ".join("null" if t is type(None) else t.__name__ for t in types)
        raise ValueError(f"invalid configuration: {name} must be {expected}, got {value!r} "
                         f"({type(value).__name__})")


def _check_types(config):
    for field in dataclasses.fields(config):
        _check_type(field.name, getattr(config, field.name), _expected_types(field))


class _FlatFields:
    """What both configuration classes do with their fields."""

    def to_dict(self):
        """Every field, those that do not apply to this model included."""
        return dataclasses.asdict(self)

    def inapplicable_fields(self):
        """``{field: why it does nothing here}`` (nothing for a :class:`TrainConfig`)."""
        return {}

    def applicable_dict(self):
        """The fields that change something for this configuration (what ``config.json``
        stores; see :meth:`ModelConfig.inapplicable_fields`)."""
        skip = self.inapplicable_fields()
        return {k: v for k, v in self.to_dict().items() if k not in skip}

    def __eq__(self, other):
        # Equal when they define the same thing: a field that does nothing for this
        # configuration (e.g. num_negatives of the full loss) is not compared.
        if type(other) is not type(self):
            return NotImplemented
        return self.applicable_dict() == other.applicable_dict()

    __hash__ = None

    def replace(self, **overrides):
        """A validated copy with ``overrides`` (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()


@dataclasses.dataclass(eq=False)
class ModelConfig(_FlatFields):
    """What defines a sequential retrieval model: everything
    ``SequentialRetrievalModel(config, vocab_size)`` needs to rebuild it exactly.

    That is the encoder's architecture (the fields declared with :func:`encoder_field`),
    the candidate tower (``tie_embeddings``) and the model's training objective, which a
    ``tfrs.Model`` carries in its ``compute_loss``: ``regime`` (a target at every position,
    or after the sequence only), ``loss`` and ``num_negatives``. The objective belongs here,
    not to :class:`TrainConfig`, because the model cannot be built without it: ``causal``
    defaults to what the regime needs, the interest memory requires regime ``"last"``, and
    the loss is the model's own method.

    Defaults follow the SASRec/LinRec setting of RecBole where it applies (2 layers,
    dropout 0.2, GELU, cross-entropy over all items), at the width of the anchor in
    docs/protocol.md (hidden 64, 2 heads, FFN 256).

    Args:
        attention: ``"softmax"``, ``"linrec"`` or ``"elastic"``.
        normalization: LinRec's L2 normalization, ``"paper"`` or ``"token"``.
        regime: ``"all"`` (causal, a next-item target at every position) or ``"last"``
            (one target after the sequence).
        loss: ``"full"`` (cross-entropy over the catalogue) or ``"sampled"``.
        causal: whether the encoder is causal; ``None``: causal for regime ``"all"``,
            non-causal for ``"last"`` (:attr:`is_causal`).
        max_len: the fixed, left-padded sequence length.
        d_model, num_layers, num_heads, ffn_dim: the encoder's width, depth, heads and
            feed-forward width.
        dropout, attention_dropout, layer_norm_epsilon: as in SASRec.
        chunk_size: the chunk length of the causal linear attentions.
        num_interests: ELASTIC's interest tokens ``k``.
        positions: the learned position embedding: ``"from_end"`` (counted from the
            newest item), ``"from_start"`` (an event's index in the user's history; past
            ``max_len - 1`` every index shares the table's last row) or ``"none"``. Only
            ``"from_start"`` and ``"none"`` can be streamed (a new event does not move the
            older events' positions). ``None``: by model (:attr:`resolved_positions`):
            ``"none"`` for causal ELASTIC with its recency bias (streamable, and better
            than ``"from_end"`` on ml-100k), ``"from_end"`` otherwise.
        recency_bias: ELASTIC's learned per-interest recency slopes on the aggregate
            logits (not in the paper; see ``LinearDispatcherAttention``); ``None``: on for
            attention ``"elastic"`` (:attr:`uses_recency_bias`).
        use_memory, memory_keys, memory_top_m: ELASTIC's product-key interest memory
            (non-causal only): on/off, sub-keys per half, rows read per query.
        tie_embeddings: the candidate tower shares the input item embeddings.
        num_negatives: shared log-uniform negatives per batch of the sampled loss.
    """

    attention: str = encoder_field("linrec", "the attention of every block", choices=ATTENTIONS)
    normalization: str = encoder_field(
        "paper", "LinRec's L2 normalization: paper (row/column-wise) or token (per position)",
        choices=NORMALIZATIONS)
    regime: str = config_field(
        "all", "training targets: all (next item at every position, causal) or last "
        "(one target after the sequence)", choices=REGIMES)
    loss: str = config_field(
        "full", "cross-entropy over the whole catalogue (full) or sampled softmax (sampled)",
        choices=LOSSES)
    causal: bool | None = encoder_field(
        None, "causal (unidirectional) encoder", default_help="by regime: causal for 'all', "
        "non-causal for 'last'")
    max_len: int = encoder_field(200, "the fixed, left-padded sequence length")
    d_model: int = encoder_field(64, "the encoder's width (embedding size)")
    num_layers: int = encoder_field(2, "transformer blocks")
    num_heads: int = encoder_field(2, "attention heads (d_model must divide by it)")
    ffn_dim: int = encoder_field(256, "feed-forward width of each block")
    dropout: float = encoder_field(0.2, "dropout of the embeddings and of each block")
    attention_dropout: float = encoder_field(0.2, "dropout inside the attention")
    layer_norm_epsilon: float = encoder_field(1e-12, "epsilon of every LayerNorm")
    chunk_size: int = encoder_field(32, "chunk length of causal LinRec")
    num_interests: int = encoder_field(16, "ELASTIC's interest tokens k")
    positions: str | None = encoder_field(
        None, "learned positions counted from the newest item (from_end), from the "
        "user's first event (from_start, streamable; indices past max_len share the last "
        "row) or none (streamable)", choices=POSITIONS,
        default_help="by model: none for causal elastic with the recency bias, "
        "else from_end")
    recency_bias: bool | None = encoder_field(
        None, "ELASTIC's learned per-interest recency slopes",
        default_help="by attention: on for elastic")
    use_memory: bool = encoder_field(
        False, "ELASTIC's product-key interest memory (non-causal only: regime last)")
    memory_keys: int = encoder_field(128, "sub-keys per half of the interest memory")
    memory_top_m: int = encoder_field(8, "memory rows read per query")
    tie_embeddings: bool = config_field(
        True, "the candidate tower shares the input item embeddings")
    num_negatives: int = config_field(
        1024, "shared log-uniform negatives per batch of the sampled loss")

    @property
    def uses_recency_bias(self):
        if self.recency_bias is None:
            return self.attention == "elastic"
        return bool(self.recency_bias)

    @property
    def can_stream(self):
        """Whether the architecture has a recurrent form (causal LinRec or ELASTIC, no
        interest memory), whatever its positions."""
        return self.is_causal and self.attention != "softmax" and not self.use_memory

    @property
    def resolved_positions(self):
        """``positions``, or for ``None`` the default by model: ``"none"`` (so the model
        streams) for causal ELASTIC with the recency bias, ``"from_end"`` otherwise.

        Measured on ml-100k (3 seeds, paired with ``"from_end"``, README "Streaming"):
        ELASTIC with the recency bias (which says how old an event is) does better without
        positions (validation NDCG@10 +3.0%, test +9.2%) than with ``"from_start"``
        (-1.9%, +4.7%); causal LinRec loses 6% of its test HR@10 in every seed with
        ``"from_start"`` (5% with ``"none"``) and softmax 5.5% of its validation NDCG@10,
        so they keep ``"from_end"``; ``--positions from_start`` streams LinRec at that
        cost."""
        if self.positions is not None:
            return self.positions
        if self.can_stream and self.attention == "elastic" and self.uses_recency_bias:
            return "none"
        return "from_end"

    @property
    def is_streamable(self):
        """Whether the model has a constant-size per-user state (docs/streaming.md): a
        causal LinRec or ELASTIC encoder whose positions do not move with a new event."""
        return self.can_stream and self.resolved_positions != "from_end"

    @property
    def is_causal(self):
        return self.regime == "all" if self.causal is None else bool(self.causal)

    def resolved(self):
        """This configuration with its defaults-by-attention made explicit (what a trained
        model's ``config.json`` records, so that a later default cannot change it)."""
        return self.replace(recency_bias=self.uses_recency_bias,
                            positions=self.resolved_positions)

    def inapplicable_fields(self):
        """``{field: why}`` for the fields that change nothing in this model: LinRec's
        ``normalization`` (and, causal, ``chunk_size``) for another attention, ELASTIC's
        ``num_interests``, ``recency_bias`` and memory for another attention (the memory's
        sizes without ``use_memory``), ``num_negatives`` of the full loss. They are neither
        compared (``==``) nor stored in ``config.json``; ``tfrs-linear train`` refuses them
        as explicit flags."""
        why = {}
        if self.attention != "linrec":
            why["normalization"] = "only attention 'linrec' uses it"
        if self.attention != "linrec" or not self.is_causal:
            why["chunk_size"] = "only causal attention 'linrec' uses it"
        if self.attention != "elastic":
            for name in ("num_interests", "recency_bias", "use_memory"):
                why[name] = "only attention 'elastic' uses it"
        if self.attention != "elastic" or not self.use_memory:
            for name in ("memory_keys", "memory_top_m"):
                why[name] = "only the interest memory (use_memory with attention 'elastic') uses it"
        if self.loss != "sampled":
            why["num_negatives"] = "only loss 'sampled' uses it"
        return why

    def encoder_kwargs(self):
        """The :class:`~tfrs_linear.layers.SequenceEncoder` arguments of this model (every
        :func:`encoder_field`), with ``causal``, ``recency_bias`` and ``positions`` resolved."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.metadata.get("encoder")}
        kwargs.update(causal=self.is_causal, recency_bias=self.uses_recency_bias,
                      positions=self.resolved_positions)
        return kwargs

    def validate(self):
        """Returns ``self``; raises ``ValueError("invalid configuration: ...")``."""
        _check_types(self)
        _check(self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        _check(self.regime in REGIMES, f"regime must be one of {REGIMES}, got {self.regime!r}")
        _check(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        _check(
            self.normalization in NORMALIZATIONS,
            f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}",
        )
        _check(self.positions is None or self.positions in POSITIONS,
               f"positions must be one of {POSITIONS}, got {self.positions!r}")
        _check_positive(self, ("max_len", "d_model", "num_layers", "num_heads", "ffn_dim",
                               "chunk_size", "num_interests", "num_negatives"))
        _check(self.d_model % self.num_heads == 0,
               f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(0.0 <= self.attention_dropout < 1.0,
               f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        if self.regime == "all":
            _check(self.is_causal, "regime 'all' trains a target at every position and needs a causal encoder")
        if self.recency_bias:
            _check(self.attention == "elastic",
                   f"recency_bias needs attention='elastic', got attention={self.attention!r}")
        if self.use_memory:
            _check(self.attention == "elastic", "use_memory needs attention='elastic'")
            _check(not self.is_causal, "the interest memory is non-causal only (regime 'last')")
        return self


@dataclasses.dataclass(eq=False)
class TrainConfig(_FlatFields):
    """What defines a training run of a model: optimizer, loop, runtime and evaluation.

    None of these changes what a trained model computes: a model directory is rebuilt
    from its :class:`ModelConfig` alone. The run's values are saved next to it (the flat
    ``config.json``); ``exclude_history`` is also the default of ``tfrs-linear evaluate``
    and ``export``.

    Args:
        learning_rate: Adam's learning rate.
        batch_size: training sequences per step.
        epochs: the epoch cap (early stopping may end the run sooner).
        patience: epochs without a better validation NDCG@10 before stopping.
        seed: the seed of the weights' initialisation and of the data order.
        xla: compile the train step and the evaluation with XLA.
        exclude_history: remove a user's history items from the ranking (docs/protocol.md).
        eval_batch_size: users scored at a time in evaluation.
        precision: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"``: the Keras
            dtype policy of the run (the optimizer scales the loss under float16).
        optimizer: ``"adam"`` or ``"lazy_adam"``
            (:class:`~tfrs_linear.training.LazyAdam`: Adam on the rows a sparse gradient
            touches; it differs only for the item table under the sampled loss, where it
            makes a step at a million items several times faster).
        lr_schedule: ``"constant"`` (``learning_rate`` throughout) or ``"cosine"``
            (``learning_rate`` decayed to 0 along a half cosine, reaching 0 at the end of
            the epoch cap; :mod:`tfrs_linear.training.lr_schedule`). Under ``"cosine"`` the
            epoch cap is part of the schedule: a run resumes only with the same ``epochs``.
        warmup_steps: train steps over which the learning rate rises linearly from 0 to
            ``learning_rate`` before the schedule starts (0: none).
        length_buckets: how many widths the training batches are cut to
            (:mod:`tfrs_linear.data.buckets`): each batch loses the left padding its
            longest row does not need (one XLA compilation per width that occurs); 1:
            every batch is ``max_len`` wide. Runs saved before the option resume with 1.
        bucket_window: 1 (default): every batch keeps its rows (the batches of a run
            without buckets, cut: without dropout the same training up to float
            rounding; dropout's masks are other draws at another width). ``W > 1``:
            the rows of ``W`` consecutive batches are regrouped by length first (much
            less padding, but batches of short and of long rows: it changes training;
            the loss then gives every target of the epoch the same weight).
    """

    learning_rate: float = config_field(1e-3, "Adam's learning rate")
    batch_size: int = config_field(128, "training sequences per step")
    epochs: int = config_field(60, "the epoch cap (early stopping may end the run sooner)")
    patience: int = config_field(
        5, "epochs without a better validation NDCG@10 before stopping")
    seed: int = config_field(2020, "seed of the initial weights and of the data order")
    xla: bool = config_field(True, "compile the train step and the evaluation with XLA")
    exclude_history: bool = config_field(
        False, "remove a user's history items from the ranking (docs/protocol.md)")
    eval_batch_size: int = config_field(256, "users scored at a time in evaluation")
    precision: str = config_field(
        "float32", "float32, or a Keras mixed-precision policy (float16 with loss scaling, "
        "bfloat16)", choices=PRECISIONS)
    optimizer: str = config_field(
        "adam", "adam, or lazy_adam: Adam on the rows a sparse gradient touches (the item "
        "table under the sampled loss; much faster with large catalogues)", choices=OPTIMIZERS)
    lr_schedule: str = config_field(
        "constant", "the learning rate held (constant), or decayed to 0 along a half cosine "
        "that ends with the epoch cap (cosine)", choices=LR_SCHEDULES)
    warmup_steps: int = config_field(
        0, "train steps of linear learning-rate warm-up from 0 (0: none)")
    length_buckets: int = config_field(
        4, "cut each training batch to the narrowest of this many widths (max_len/N, "
        "2*max_len/N, ..., max_len) that holds its longest row: less padding computed, one "
        "XLA compilation per width (1: every batch max_len wide)")
    bucket_window: int = config_field(
        1, "with length buckets: 1 keeps every batch's rows (the same batches); W > 1 "
        "regroups the rows of W consecutive batches by length first (far less padding, but "
        "it changes the batches: measure the quality)")

    def validate(self):
        """Returns ``self``; raises ``ValueError("invalid configuration: ...")``."""
        _check_types(self)
        _check(self.precision in PRECISIONS,
               f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.optimizer in OPTIMIZERS,
               f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check_positive(self, ("batch_size", "epochs", "eval_batch_size", "length_buckets",
                               "bucket_window"))
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        return self


MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
if set(MODEL_KEYS) & set(TRAIN_KEYS):  # a new field must not reuse a key of the other class
    raise TypeError(f"ModelConfig and TrainConfig share keys {sorted(set(MODEL_KEYS) & set(TRAIN_KEYS))}")


def _split_keys(values, source):
    """``values`` split into ``(model keys, train keys)``; unknown keys are an error."""
    known = set(MODEL_KEYS) | set(TRAIN_KEYS)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown configuration keys {unknown}; known keys: {sorted(known)}")
    return ({k: v for k, v in values.items() if k in MODEL_KEYS},
            {k: v for k, v in values.items() if k in TRAIN_KEYS})


def config_from_dict(values, source="configuration"):
    """``(ModelConfig, TrainConfig)`` from one flat dict; missing keys take the defaults.

    Raises ``ValueError`` naming ``source`` and listing the known keys for an unknown key,
    and ``ValueError("SOURCE: invalid configuration: ...")`` for an invalid value, a
    value of the wrong type included (``"20"`` or ``20.5`` for an int, ``"0.1"`` for a
    float, ``true`` for an int: refused, never converted).
    """
    if not isinstance(values, dict):
        raise ValueError(f"{source}: a configuration is a JSON object of keys and values, "
                         f"got {type(values).__name__}")
    model_values, train_values = _split_keys(values, source)
    try:
        return ModelConfig(**model_values).validate(), TrainConfig(**train_values).validate()
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def to_flat_dict(model_config, train_config):
    """The flat dict of both configurations (what ``config.json`` holds): every key that
    applies to this model (:meth:`ModelConfig.inapplicable_fields` are left out)."""
    return {**model_config.applicable_dict(), **train_config.applicable_dict()}


def replace_config(model_config, train_config, **overrides):
    """Both configurations with flat ``overrides`` applied, each to the class its key
    belongs to (``None`` values are ignored, as for command-line flags left unset)."""
    model_values, train_values = _split_keys(overrides, "overrides")
    return model_config.replace(**model_values), train_config.replace(**train_values)


def load_config(path, missing=None):
    """``(ModelConfig, TrainConfig)`` from the flat JSON file ``path``.

    ``missing`` maps keys the file may lack to the values to use then instead of the
    defaults. ``"_comment"`` and ``"_reference"`` keys are notes and are ignored. Errors
    name the file (and the line of invalid JSON).
    """
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"configuration file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a configuration file holds one JSON object, "
                         f"got {type(values).__name__}")
    for key in _NOTE_KEYS:
        values.pop(key, None)
    for key, value in (missing or {}).items():
        values.setdefault(key, value)
    return config_from_dict(values, source=str(path))


def load_saved_config(path):
    """The configurations a trained model saved (``OUTPUT/config.json``). Keys added after
    that model was saved take the value that matches how it was trained."""
    return load_config(path, missing=_SAVED_BEFORE_THE_OPTION)


def save_config(path, model_config, train_config):
    """Writes both configurations to ``path`` as one flat JSON object, keys sorted."""
    flat = to_flat_dict(model_config, train_config)
    Path(path).write_text(json.dumps(flat, indent=2, sort_keys=True) + "\n")


__all__ = [
    "ModelConfig", "TrainConfig", "MODEL_KEYS", "TRAIN_KEYS", "config_from_dict", "to_flat_dict",
    "replace_config", "load_config", "load_saved_config", "save_config", "encoder_field",
    "config_field", "ATTENTIONS", "NORMALIZATIONS", "REGIMES", "LOSSES", "PRECISIONS",
]
