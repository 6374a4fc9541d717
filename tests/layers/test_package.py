"""The `tfrs_linear.layers` package: it sets up Keras 2 on import, exports the layers the
README documents, and registers them under the serialization names saved models carry."""

import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tfrs_linear import constants, layers


def _run(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def test_import_sets_legacy_keras_and_refuses_keras_3():
    # (`import tfrs_linear` alone no longer imports TensorFlow; the layers need Keras 2.)
    ok = _run("import tensorflow as tf; import tfrs_linear.layers, os; "
              "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.__name__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["1", "tf_keras.api._v2.keras"]
    bad = _run("import tfrs_linear.layers", TF_USE_LEGACY_KERAS="0")
    assert bad.returncode != 0
    assert "ImportError" in bad.stderr and "TF_USE_LEGACY_KERAS=1" in bad.stderr


@pytest.mark.parametrize("name", ["LinRecAttention", "LinearDispatcherAttention",
                                  "InterestMemory", "TransformerBlock", "CounterDropout",
                                  "SoftmaxAttention"])
def test_layers_keep_their_serialization_names(name):
    cls = getattr(layers, name)
    assert tf.keras.utils.get_registered_name(cls) == f"tfrs_linear>{name}"
    assert tf.keras.utils.get_registered_object(f"tfrs_linear>{name}") is cls


def test_shared_names_come_from_constants():
    assert layers.ATTENTIONS is constants.ATTENTIONS
    from tfrs_linear.layers.transformer import ATTENTIONS
    from tfrs_linear.ops import NORMALIZATIONS
    from tfrs_linear.ops.linrec import NORMALIZATIONS as LINREC_NORMALIZATIONS

    assert ATTENTIONS is constants.ATTENTIONS
    assert NORMALIZATIONS is LINREC_NORMALIZATIONS is constants.NORMALIZATIONS
