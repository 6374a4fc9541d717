"""Where training runs: the ``tf.distribute`` strategies of ``--strategy`` and the helpers
the :class:`~tfrs_linear.training.Trainer` needs around them (``TF_CONFIG`` parsing, this
process's worker index, a barrier, whether the train step may be one XLA computation)."""

import json
import os
import socket

import tensorflow as tf

from tfrs_linear.constants import STRATEGIES

STRATEGY_NAMES = STRATEGIES


def parse_tf_config(text):
    """``(workers, index)`` of a ``TF_CONFIG`` JSON string for ``--strategy multiworker``:
    the ``host:port`` list of the cluster's ``worker`` tasks and this process's index
    (worker 0 is the chief). Raises ``ValueError`` naming what is wrong: missing, not
    JSON, a task type other than ``worker`` (no ``chief``, ``ps`` or ``evaluator``: every
    process trains), an index outside the worker list."""
    if not text:
        raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable: "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                         '"worker", "index": I}} (worker 0 is the chief)')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG needs a "cluster" object and a "task" object')
    others = sorted(set(cluster) - {"worker"})
    if others or task.get("type") != "worker":
        raise ValueError(f"TF_CONFIG may hold worker tasks only (worker 0 is the chief), got "
                         f"cluster tasks {sorted(cluster)} and task type {task.get('type')!r}")
    workers = cluster["worker"]
    if (not isinstance(workers, list) or not workers
            or not all(isinstance(w, str) and ":" in w for w in workers)):
        raise ValueError(f'TF_CONFIG cluster "worker" must be a non-empty list of "host:port", '
                         f"got {workers!r}")
    index = task.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(workers):
        raise ValueError(f"TF_CONFIG task index must be in [0, {len(workers) - 1}], got {index!r}")
    return list(workers), index


def loopback_tf_configs(num_workers):
    """``TF_CONFIG`` JSON strings for ``num_workers`` workers on free loopback ports of this
    machine, one per worker (index i for worker i): to try ``--strategy multiworker``
    locally (the tests and ``scripts/bench_multiworker.py`` start their workers so)."""
    sockets = [socket.socket() for _ in range(num_workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    workers = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(num_workers)]


def make_strategy(name):
    """The ``tf.distribute`` strategy named ``name`` (:data:`STRATEGY_NAMES`).

    ``"multiworker"`` is a ``MultiWorkerMirroredStrategy`` configured from ``TF_CONFIG``
    (:func:`parse_tf_config`). It configures the collective ops of the process, which
    TensorFlow allows only before any other op ran: create it first, before loading the
    data (``tfrs-linear train`` does), and give the object to :class:`Trainer`."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        parse_tf_config(os.environ.get("TF_CONFIG"))
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as e:
            raise RuntimeError(f"{e}: create the multiworker strategy (make_strategy) before "
                               "any other TensorFlow op runs") from None
    raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGY_NAMES)}")


def worker_of(strategy):
    """``(index, count)`` of this process among the strategy's workers: ``(0, 1)`` for a
    single-process strategy; the chief is worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    workers = resolver.cluster_spec().as_dict().get("worker", [])
    return int(resolver.task_id or 0), max(1, len(workers))


def barrier(strategy):
    """Waits until every worker got here (an all-reduce); nothing with one worker."""
    if worker_of(strategy)[1] > 1:
        ones = strategy.run(lambda: tf.ones([]))
        strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None).numpy()


def xla_train_step_supported(strategy):
    """Whether ``fit``'s train step may be one XLA computation under ``strategy``.

    Under the default strategy the whole step (forward, loss, gradients, Adam update) is
    compiled. With several replicas (``mirrored``, ``multiworker``) the optimizer sums
    the replicas' gradients in a cross-replica step (``merge_call`` and the collective
    all-reduce) between the gradients and the update; tf-keras cannot put that inside an
    XLA computation on CPU replicas, so the train step (and fit's validation step) runs
    as a graph (``tf.function``) there; on GPU/TPU replicas it stays compiled. The
    evaluator's query tower (final metrics, ``tfrs-linear evaluate``) is XLA-compiled
    under every strategy: it runs outside the replicas."""
    if strategy.num_replicas_in_sync <= 1:
        return True
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


__all__ = ["STRATEGY_NAMES", "parse_tf_config", "loopback_tf_configs", "make_strategy",
           "worker_of", "barrier", "xla_train_step_supported"]
