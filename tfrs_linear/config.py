"""Model and training configuration: one dataclass, saved with every trained model.

Reference configurations live in the repository's ``models/`` folder as JSON files;
``tfrs-linear train --config models/linrec.json`` loads one, explicit flags override it,
and the effective configuration is written to ``OUTPUT/config.json``.
"""

import dataclasses
import json
from pathlib import Path

ATTENTIONS = ("softmax", "linrec", "elastic")
REGIMES = ("all", "last")
LOSSES = ("full", "sampled")
NORMALIZATIONS = ("paper", "token")


# Values for keys a saved config.json may predate: what those models were trained with.
_SAVED_BEFORE_THE_OPTION = {"recency_bias": False}


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to rebuild, train and serve a sequential retrieval model.

    Defaults follow the SASRec/LinRec setting of RecBole where it applies (2 layers,
    dropout 0.2, GELU, Adam 1e-3, cross-entropy over all items), at the width of the
    anchor in protocol.md (hidden 64, 2 heads, FFN 256).
    """

    attention: str = "linrec"
    normalization: str = "paper"
    regime: str = "all"
    loss: str = "full"
    causal: bool | None = None  # None: causal for regime "all", non-causal for "last".
    max_len: int = 200
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.2
    attention_dropout: float = 0.2
    layer_norm_epsilon: float = 1e-12
    chunk_size: int = 64
    num_interests: int = 16
    # ELASTIC's learned per-interest recency slopes on the aggregate logits (not in the
    # paper; see LinearDispatcherAttention). None: on for attention "elastic".
    recency_bias: bool | None = None
    use_memory: bool = False
    memory_keys: int = 128
    memory_top_m: int = 8
    tie_embeddings: bool = True
    num_negatives: int = 1024
    learning_rate: float = 1e-3
    batch_size: int = 128
    epochs: int = 30
    patience: int = 5
    seed: int = 2020
    xla: bool = True
    exclude_history: bool = False
    eval_batch_size: int = 256

    @property
    def uses_recency_bias(self):
        if self.recency_bias is None:
            return self.attention == "elastic"
        return bool(self.recency_bias)

    def resolved(self):
        """This configuration with its defaults-by-attention made explicit (what a trained
        model's ``config.json`` records, so that a later default cannot change it)."""
        return self.replace(recency_bias=self.uses_recency_bias)

    @property
    def is_causal(self):
        return self.regime == "all" if self.causal is None else bool(self.causal)

    def validate(self):
        def check(cond, msg):
            if not cond:
                raise ValueError(f"invalid configuration: {msg}")

        check(self.attention in ATTENTIONS, f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        check(self.regime in REGIMES, f"regime must be one of {REGIMES}, got {self.regime!r}")
        check(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        check(
            self.normalization in NORMALIZATIONS,
            f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}",
        )
        for name in ("max_len", "d_model", "num_layers", "num_heads", "ffn_dim", "batch_size",
                     "epochs", "chunk_size", "num_interests", "num_negatives", "eval_batch_size"):
            check(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.d_model % self.num_heads == 0,
              f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check(0.0 <= self.attention_dropout < 1.0,
              f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        if self.regime == "all":
            check(self.is_causal, "regime 'all' trains a target at every position and needs a causal encoder")
        if self.recency_bias:
            check(self.attention == "elastic",
                  f"recency_bias needs attention='elastic', got attention={self.attention!r}")
        if self.use_memory:
            check(self.attention == "elastic", "use_memory needs attention='elastic'")
            check(not self.is_causal, "the interest memory is non-causal only (regime 'last')")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values, source="configuration"):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown configuration keys {unknown}; known keys: {sorted(known)}")
        return cls(**values).validate()

    @classmethod
    def load_saved(cls, path):
        """The configuration a trained model saved (``OUTPUT/config.json``). Keys added
        after that model was saved take the value that matches how it was trained."""
        return cls.load(path, missing=_SAVED_BEFORE_THE_OPTION)

    def save(self, path):
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path, missing=None):
        """The configuration in JSON file ``path``; ``missing`` maps keys the file may lack
        to the values to use then instead of the defaults."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"configuration file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: invalid JSON: {e.msg}") from None
        values.pop("_comment", None)
        values.pop("_reference", None)
        for key, value in (missing or {}).items():
            values.setdefault(key, value)
        return cls.from_dict(values, source=str(path))

    def replace(self, **overrides):
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None}).validate()
