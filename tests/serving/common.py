"""Shared data and independent oracles of the serving tests.

Oracles are independent of the export code: NumPy brute-force top-k from the Python
model's ``encode`` and ``item_embeddings`` on manually left-padded inputs.
"""

import contextlib
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf

MAX_LEN = 8
K = 5
VOCAB = ["[PAD]", "[OOV]"] + [f"item{i}" for i in range(18)]
CATALOGUE = VOCAB[2:]
INDEX = {raw: i for i, raw in enumerate(VOCAB)}


def left_pad(rows, max_len=MAX_LEN):
    """Manual oracle: raw rows → newest max_len indices, left-padded with 0."""
    out = np.zeros([len(rows), max_len], np.int32)
    for r, row in enumerate(rows):
        # Unknown ids and the reserved tokens "[PAD]"/"[OOV]" are out of vocabulary (1).
        idx = [max(INDEX.get(v, 1), 1) for v in row if v != ""][-max_len:]
        if idx:
            out[r, max_len - len(idx):] = idx
    return out


def numpy_scores(model, rows, exclude_history=False):
    user = model.encode(tf.constant(left_pad(rows)), training=False).numpy()
    items = model.item_embeddings().numpy()
    scores = user.astype(np.float64) @ items.T.astype(np.float64)
    scores[:, :2] = -np.inf  # padding and OOV are never candidates
    if exclude_history:
        for r, row in enumerate(rows):
            for v in row:
                if v != "":
                    scores[r, INDEX.get(v, 1)] = -np.inf
    return scores


def numpy_topk(scores, k):
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    ids = np.array([[VOCAB[i] for i in row] for row in order], dtype=str)
    return ids, np.take_along_axis(scores, order, axis=1)


def pad_rows(rows):
    width = max(len(r) for r in rows)
    return [list(r) + [""] * (width - len(r)) for r in rows]


def strs(array):
    return np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[str])(array)


ROWS = [
    ["item3"],
    ["item1", "nope", "item7"],  # an unknown id
    [],  # an all-empty row
    [f"item{i}" for i in range(12)],  # longer than max_len
    ["item5", "item5", "item9", "[PAD]"],  # a repeat; a reserved token is OOV, not padding
]


class JsonReplyHandler(BaseHTTPRequestHandler):
    """The base of the REST stand-ins: quiet, and ``_reply(status, payload)`` as JSON."""

    def log_message(self, *args):
        pass

    def _reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def loopback_servers(handler, servicer):
    """Serves REST with ``handler`` and gRPC ``PredictionService`` with ``servicer`` on
    127.0.0.1 ephemeral ports; yields ``(rest_port, grpc_port)``, shuts both down after."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield httpd.server_address[1], grpc_port
    finally:
        server.stop(0).wait(5)
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
