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
name is declared with ``encoder_field``. Pure Python: no TensorFlow is imported here.
"""

import dataclasses
import json
from pathlib import Path

from tfrs_linear.constants import ATTENTIONS, LOSSES, NORMALIZATIONS, REGIMES  # noqa: F401

# Values for keys a saved config.json may predate: what those models were trained with.
_SAVED_BEFORE_THE_OPTION = {"recency_bias": False}
# Keys of a configuration file that are notes for its readers, not configuration.
_NOTE_KEYS = ("_comment", "_reference")


def _check(cond, msg):
    if not cond:
        raise ValueError(f"invalid configuration: {msg}")


def _check_positive(config, names):
    for name in names:
        value = getattr(config, name)
        _check(int(value) >= 1, f"{name} must be >= 1, got {value}")


def encoder_field(default):
    """A :class:`ModelConfig` field that is also the :class:`SequenceEncoder` argument of
    the same name (see :meth:`ModelConfig.encoder_kwargs`)."""
    return dataclasses.field(default=default, metadata={"encoder": True})


class _FlatFields:
    """What both configuration classes do with their fields."""

    def to_dict(self):
        return dataclasses.asdict(self)

    def replace(self, **overrides):
        """A validated copy with ``overrides`` (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()


@dataclasses.dataclass
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
        recency_bias: ELASTIC's learned per-interest recency slopes on the aggregate
            logits (not in the paper; see ``LinearDispatcherAttention``); ``None``: on for
            attention ``"elastic"`` (:attr:`uses_recency_bias`).
        use_memory, memory_keys, memory_top_m: ELASTIC's product-key interest memory
            (non-causal only): on/off, sub-keys per half, rows read per query.
        tie_embeddings: the candidate tower shares the input item embeddings.
        num_negatives: shared log-uniform negatives per batch of the sampled loss.
    """

    attention: str = encoder_field("linrec")
    normalization: str = encoder_field("paper")
    regime: str = "all"
    loss: str = "full"
    causal: bool | None = encoder_field(None)
    max_len: int = encoder_field(200)
    d_model: int = encoder_field(64)
    num_layers: int = encoder_field(2)
    num_heads: int = encoder_field(2)
    ffn_dim: int = encoder_field(256)
    dropout: float = encoder_field(0.2)
    attention_dropout: float = encoder_field(0.2)
    layer_norm_epsilon: float = encoder_field(1e-12)
    chunk_size: int = encoder_field(64)
    num_interests: int = encoder_field(16)
    recency_bias: bool | None = encoder_field(None)
    use_memory: bool = encoder_field(False)
    memory_keys: int = encoder_field(128)
    memory_top_m: int = encoder_field(8)
    tie_embeddings: bool = True
    num_negatives: int = 1024

    @property
    def uses_recency_bias(self):
        if self.recency_bias is None:
            return self.attention == "elastic"
        return bool(self.recency_bias)

    @property
    def is_causal(self):
        return self.regime == "all" if self.causal is None else bool(self.causal)

    def resolved(self):
        """This configuration with its defaults-by-attention made explicit (what a trained
        model's ``config.json`` records, so that a later default cannot change it)."""
        return self.replace(recency_bias=self.uses_recency_bias)

    def encoder_kwargs(self):
        """The :class:`~tfrs_linear.layers.SequenceEncoder` arguments of this model (every
        :func:`encoder_field`), with ``causal`` and ``recency_bias`` resolved."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.metadata.get("encoder")}
        kwargs.update(causal=self.is_causal, recency_bias=self.uses_recency_bias)
        return kwargs

    def validate(self):
        """Returns ``self``; raises ``ValueError("invalid configuration: ...")``."""
        _check(self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        _check(self.regime in REGIMES, f"regime must be one of {REGIMES}, got {self.regime!r}")
        _check(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        _check(
            self.normalization in NORMALIZATIONS,
            f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}",
        )
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


@dataclasses.dataclass
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
    """

    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 30
    patience: int = 5
    seed: int = 2020
    xla: bool = True
    exclude_history: bool = False
    eval_batch_size: int = 256

    def validate(self):
        """Returns ``self``; raises ``ValueError("invalid configuration: ...")``."""
        _check_positive(self, ("batch_size", "epochs", "eval_batch_size"))
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
    and ``ValueError("invalid configuration: ...")`` for an invalid value.
    """
    model_values, train_values = _split_keys(values, source)
    return ModelConfig(**model_values).validate(), TrainConfig(**train_values).validate()


def to_flat_dict(model_config, train_config):
    """The flat dict of both configurations (what ``config.json`` holds)."""
    return {**model_config.to_dict(), **train_config.to_dict()}


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
    "ATTENTIONS", "NORMALIZATIONS", "REGIMES", "LOSSES",
]
