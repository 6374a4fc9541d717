"""Sequential retrieval with keras-rs and the Keras 3 `SequenceEncoder` as query tower.

A small end-to-end example for Keras 3 (any backend for training; TensorFlow for the
export)::

    KERAS_BACKEND=tensorflow python -m tfrs_linear.keras3.example --output runs/keras3-demo
    tfrs-linear check-serving runs/keras3-demo/saved_model/1 --no-compare

* data: synthetic users whose histories follow item-to-item transitions (a random
  sparse Markov chain over the catalogue), left-padded to ``max_len``, newest last;
  ids 0 = padding and 1 = OOV as in the rest of the package;
* model: the query tower is :class:`tfrs_linear.keras3.SequenceEncoder` (its newest
  position, ``last_only=True``); the candidate tower is the encoder's own item
  embedding (tied); the loss is Keras categorical cross-entropy over the
  full-catalogue logits (keras-rs has ranking losses only), trained on every prefix of
  each training history (the newest item is held out for evaluation);
* metrics: ``keras_rs.metrics.RecallAtK`` and ``NDCG`` on the full-catalogue scores;
* serving: ``keras_rs.layers.BruteForceRetrieval`` over the real items (ids >= 2)
  returns the top-k ``item_ids`` and ``scores``; exported with Keras 3's
  ``ExportArchive`` as a TF Serving SavedModel with a warmup request per signature in
  ``assets.extra/tf_serving_warmup_requests``;
* streaming: when the encoder streams (``positions`` ``"from_start"`` or ``"none"``, the
  latter ELASTIC's default here) the export also has ``encode_state`` (a user's whole
  history, left-padded ``item_ids``, -> the state tensors and ``user_embedding``) and
  ``step`` (the state and new right-padded ``item_ids [batch, m]`` -> the new state,
  ``user_embedding`` and the top-k ``item_ids`` and ``scores``): a service stores the
  state per user and pays one ``step`` per event, whatever the history's length.
"""

import argparse
import json
import os
from pathlib import Path

import keras
import keras_rs
import numpy as np
from keras import ops

from tfrs_linear.constants import NUM_RESERVED, PAD_INDEX, POSITIONS
from tfrs_linear.keras3 import _common as C
from tfrs_linear.keras3.encoder import SequenceEncoder

WARMUP_FILE = "tf_serving_warmup_requests"


def synthetic_histories(num_users=256, num_items=50, max_len=20, seed=0):
    """``[num_users, max_len + 1]`` left-padded int32 histories (ids >= NUM_RESERVED).

    Each item has 3 likely successors; lengths are uniform in ``[4, max_len + 1]``.
    """
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, num_items, size=(num_items, 3))
    rows = np.zeros((num_users, max_len + 1), np.int32)
    for u in range(num_users):
        length = int(rng.integers(4, max_len + 2))
        item = int(rng.integers(num_items))
        seq = []
        for _ in range(length):
            seq.append(item)
            jump = rng.random() < 0.1
            item = int(rng.integers(num_items)) if jump else int(rng.choice(successors[item]))
        rows[u, -length:] = np.asarray(seq) + NUM_RESERVED
    return rows


def prefix_examples(histories, max_len):
    """Every (left-padded prefix, next item) pair of the training part of each history
    (all but the newest item); prefixes without an item are dropped."""
    inputs, targets = [], []
    for row in histories[:, :-1]:
        items = row[row != PAD_INDEX]
        for t in range(1, len(items)):
            prefix = items[max(0, t - max_len):t]
            padded = np.zeros(max_len, np.int32)
            padded[max_len - len(prefix):] = prefix
            inputs.append(padded)
            targets.append(items[t])
    return np.stack(inputs), np.asarray(targets, np.int32)


@C.register
class SequentialRetrievalModel(keras.Model):
    """Query tower = :class:`SequenceEncoder` (newest position), candidates = its tied
    item embedding; ``model(item_ids)`` returns full-catalogue logits ``[batch, vocab]``
    in which the reserved ids (padding, OOV) can never win."""

    def __init__(self, vocab_size, max_len, encoder_config=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.max_len = int(vocab_size), int(max_len)
        self.encoder_config = dict(encoder_config or {})
        self.encoder = SequenceEncoder(self.vocab_size, self.max_len, name="encoder",
                                       **self.encoder_config)

    def query(self, item_ids, training=None):
        return self.encoder(item_ids, training=training, last_only=True)[:, 0, :]

    def call(self, item_ids, training=None):
        query = self.query(item_ids, training=training)
        table = ops.cast(self.encoder.item_embedding.embeddings, query.dtype)
        logits = ops.matmul(query, ops.transpose(table))
        reserved = ops.arange(self.vocab_size) < NUM_RESERVED
        return ops.where(reserved[None, :], ops.cast(-1e9, logits.dtype), logits)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, max_len=self.max_len,
                      encoder_config=self.encoder_config)
        return config


def build_model(vocab_size, max_len, k=10, learning_rate=3e-3, jit_compile="auto",
                **encoder_config):
    """A compiled :class:`SequentialRetrievalModel` (categorical cross-entropy over the
    catalogue, keras-rs Recall@k and NDCG@k)."""
    model = SequentialRetrievalModel(vocab_size, max_len, encoder_config)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras_rs.metrics.RecallAtK(k=k, name="recall"),
                 keras_rs.metrics.NDCG(k=k, name="ndcg")],
        jit_compile=jit_compile,
    )
    return model


def serving_model(model, k=10):
    """``item_ids [batch, max_len]`` -> ``{"item_ids", "scores"}`` top-k over the real
    items, through ``keras_rs.layers.BruteForceRetrieval``."""
    if not model.built:
        model(np.zeros((1, model.max_len), np.int32))
    table = ops.convert_to_numpy(model.encoder.item_embedding.embeddings)
    retrieval = keras_rs.layers.BruteForceRetrieval(k=k, return_scores=True, name="top_k")
    retrieval.update_candidates(table[NUM_RESERVED:],
                                np.arange(NUM_RESERVED, model.vocab_size, dtype=np.int32))
    ids = keras.Input((model.max_len,), dtype="int32", name="item_ids")
    scores, top = retrieval(model.query(ids))
    return keras.Model(ids, {"item_ids": top, "scores": scores}, name="serving")


def _streaming_endpoints(model, serving):
    """``{name: (fn, input_signature)}`` of the ``encode_state`` and ``step`` signatures."""
    import tensorflow as tf

    encoder, retrieval = model.encoder, serving.get_layer("top_k")
    state_specs = {name: tf.TensorSpec((None,) + tuple(value.shape[1:]), tf.float32, name=name)
                   for name, value in encoder.initial_state(1).items()}
    ids_spec = tf.TensorSpec((None, None), tf.int32, name="item_ids")

    def encode_state(item_ids):
        state, user = encoder.encode_state(item_ids)
        return {**state, "user_embedding": user}

    def step(state, item_ids):
        state, user = encoder.step(state, item_ids)
        scores, top = retrieval(user)
        return {**state, "user_embedding": user, "item_ids": top, "scores": scores}

    return {"encode_state": (encode_state, [ids_spec]),
            "step": (step, [dict(state_specs), ids_spec])}


def _request(signature_name, inputs):
    """A TF Serving ``PredictionLog`` (a warmup record) for ``inputs {name: array}``."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name="keras3", signature_name=signature_name))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value)))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))


def export_for_serving(serving, export_dir, example_ids, model=None):
    """Writes ``serving`` as a TF Serving SavedModel in ``export_dir`` with a warmup
    request per signature; with ``model`` (the trained :class:`SequentialRetrievalModel`)
    whose encoder streams, ``encode_state`` and ``step`` too. Returns the name of
    ``serving_default``'s input. TensorFlow backend only."""
    check_export_backend()
    import tensorflow as tf

    export_dir = Path(export_dir)
    archive = keras.export.ExportArchive()
    archive.track(serving)
    ids_spec = tf.TensorSpec((None, serving.input_shape[1]), tf.int32, name="item_ids")
    archive.add_endpoint("serve", lambda item_ids: serving(item_ids), [ids_spec])
    streams = model is not None and model.encoder.streamable
    if streams:
        for name, (fn, signature) in _streaming_endpoints(model, serving).items():
            archive.add_endpoint(name, fn, signature)
    archive.write_out(str(export_dir), verbose=False)
    loaded = tf.saved_model.load(str(export_dir)).signatures
    (name,) = loaded["serving_default"].structured_input_signature[1].keys()
    example_ids = np.asarray(example_ids, np.int32)
    logs = [_request("serving_default", {name: example_ids})]
    if streams:  # the state of each history but its newest item, then that item
        state = loaded["encode_state"](item_ids=tf.constant(example_ids[:, :-1]))
        state = {key: v.numpy() for key, v in state.items() if key != "user_embedding"}
        logs += [_request("encode_state", {"item_ids": example_ids[:, :-1]}),
                 _request("step", {**state, "item_ids": example_ids[:, -1:]})]
    (export_dir / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(export_dir / "assets.extra" / WARMUP_FILE)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return name


def check_export_backend():
    """Raises ``ValueError`` unless the backend can export for TF Serving (TensorFlow)."""
    if keras.config.backend() != "tensorflow":
        raise ValueError(
            "exporting for TF Serving needs KERAS_BACKEND=tensorflow (Keras 3's "
            f"model.export writes a TensorFlow SavedModel); this is {keras.config.backend()!r}: "
            "train without the export (--no-export, export=False) or switch backends."
        )


def default_positions(attention):
    """``"none"`` for ELASTIC (its recency bias orders the events, and the encoder then
    streams), ``"from_end"`` otherwise (as ``tfrs-linear train``'s defaults)."""
    return "none" if attention == "elastic" else "from_end"


def one_hot(targets, vocab_size):
    return np.eye(vocab_size, dtype=np.float32)[targets]


def run(output, attention="linrec", epochs=3, num_users=256, num_items=50, max_len=20,
        k=10, batch_size=64, seed=0, jit_compile="auto", export=True, **encoder_config):
    """Trains, evaluates (the held-out newest item of every user) and exports; writes
    ``metrics.json`` in ``output`` and returns the metrics dict. With ``export`` on a
    backend other than TensorFlow it raises before training."""
    if export:
        check_export_backend()
    keras.utils.set_random_seed(seed)
    vocab = num_items + NUM_RESERVED
    histories = synthetic_histories(num_users, num_items, max_len, seed)
    x, y = prefix_examples(histories, max_len)
    defaults = dict(d_model=32, num_layers=2, num_heads=2, ffn_dim=64, dropout=0.1,
                    attention_dropout=0.1, chunk_size=8, num_interests=4,
                    positions=default_positions(attention))
    config = dict(defaults, attention=attention, causal=True, **encoder_config)
    model = build_model(vocab, max_len, k=k, jit_compile=jit_compile, **config)
    history = model.fit(x, one_hot(y, vocab), batch_size=batch_size, epochs=epochs,
                        verbose=0)
    test_x, test_y = histories[:, :-1], histories[:, -1]  # the newest item is held out
    evaluation = model.evaluate(test_x, one_hot(test_y, vocab), batch_size=batch_size,
                                verbose=0, return_dict=True)
    metrics = {"train_loss": [float(v) for v in history.history["loss"]],
               "test": {key: float(v) for key, v in evaluation.items()},
               "backend": keras.config.backend(), "attention": attention}
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if export:
        serving = serving_model(model, k)
        export_dir = output / "saved_model" / "1"
        metrics["serving_input"] = export_for_serving(serving, export_dir, test_x[:4], model)
        metrics["export_dir"] = str(export_dir)
        metrics["streaming"] = model.encoder.streamable
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--attention", default="linrec", choices=("softmax", "linrec", "elastic"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--positions", choices=POSITIONS, default=None,
                        help="position embedding (default: none for elastic, else "
                        "from_end); from_start or none export the streaming signatures")
    parser.add_argument("--no-export", dest="export", action="store_false")
    args = parser.parse_args(argv)
    if args.export:
        try:
            check_export_backend()
        except ValueError as error:
            parser.error(str(error))
    positions = args.positions or default_positions(args.attention)
    metrics = run(args.output, attention=args.attention, epochs=args.epochs,
                  export=args.export, positions=positions)
    print(json.dumps(metrics["test"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
