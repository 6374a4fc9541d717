"""``keras.ops`` that give the same results on every backend, PyTorch included.

* ``maximum``, ``minimum``, ``matmul`` and ``cumsum`` keep float64. Keras 3 maps float64
  to float32 in its type promotion on every backend but TensorFlow
  (``keras.backend.result_type("float64", "float64")`` is ``"float32"`` there); on PyTorch
  these four ``keras.ops`` then compute float64 tensors in float32 (JAX's own functions
  keep float64 under ``JAX_ENABLE_X64``). The layers compute float64 inputs in float64, so
  on PyTorch these call ``torch`` directly when an input is a float64 tensor.
* ``top_k`` puts equal values in index order, as TensorFlow and JAX do (``torch.topk``
  leaves the order of ties open): the interest memory's slots of an all-padding row,
  whose scores are all 0, are slots ``0 .. m-1`` on every backend.

Everywhere else (other dtypes, other backends, symbolic tensors) they are ``keras.ops``'
own.
"""
import keras
from keras import ops

_TORCH = keras.config.backend() == "torch"


def _as_float64_torch(*xs):
    """The inputs as torch tensors when one of them is a float64 torch tensor, else None."""
    if not _TORCH:
        return None
    import torch

    ref = next((x for x in xs if isinstance(x, torch.Tensor) and x.dtype == torch.float64),
               None)
    if ref is None:
        return None
    return [x if isinstance(x, torch.Tensor)
            else torch.as_tensor(x, dtype=torch.float64, device=ref.device) for x in xs]


def _float64_kept(name):
    """``keras.ops.<name>(x, y)``, computed by ``torch.<name>`` for float64 torch inputs."""
    keras_op = getattr(ops, name)

    def op(x, y):
        both = _as_float64_torch(x, y)
        if both is None:
            return keras_op(x, y)
        import torch

        return getattr(torch, name)(*both)

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"``keras.ops.{name}``, float64 kept."
    return op


maximum = _float64_kept("maximum")
minimum = _float64_kept("minimum")
matmul = _float64_kept("matmul")


def cumsum(x, axis):
    """``keras.ops.cumsum`` along ``axis``, float64 kept."""
    one = _as_float64_torch(x)
    if one is None:
        return ops.cumsum(x, axis=axis)
    import torch

    return torch.cumsum(one[0], dim=axis)


def top_k(x, k):
    """``keras.ops.top_k(x, k)`` over the last axis, ties in index order on every backend."""
    if not _TORCH:
        return ops.top_k(x, k=k)
    import torch

    if not isinstance(x, torch.Tensor):
        return ops.top_k(x, k=k)
    values, indices = torch.sort(x, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k].to(torch.int32)
