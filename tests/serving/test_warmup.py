"""tfrs_linear.serving.warmup: the warmup records written into every export."""

import tensorflow as tf

from tests.serving.common import MAX_LEN, VOCAB, strs
from tfrs_linear import serving


def test_warmup_requests_cover_every_signature(exports):
    logs = serving.read_warmup(exports["v1"] / "assets.extra" / serving.WARMUP_FILE)
    by_sig = {}
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.name == "recs"
        by_sig.setdefault(req.model_spec.signature_name, []).append(
            {k: tf.make_ndarray(v) for k, v in req.inputs.items()})
    assert set(by_sig) == {"serving_default", "encode", "serving_tf_example"}
    for sig in ("serving_default", "encode"):
        shapes = {r["item_ids"].shape for r in by_sig[sig]}
        assert len({s[0] for s in shapes}) > 1 and len({s[1] for s in shapes}) > 1
        assert any(s[1] > MAX_LEN for s in shapes)
        flat = [strs(r["item_ids"]) for r in by_sig[sig]]
        assert any((a == "").all(axis=1).any() for a in flat)  # an all-empty row
        assert any(not set(a.ravel()) <= set(VOCAB) | {""} for a in flat)  # unknown ids
    assert len({r["examples"].shape[0] for r in by_sig["serving_tf_example"]}) > 1
