"""Train the bundled sample: a small CNN on scikit-learn's handwritten digits.

Pure numpy (no deep-learning framework), so the sample is reproducible from
this script alone:  python samples/train_digits_cnn.py  writes

    samples/digits_cnn.onnx      the float model, input "input" [1,1,8,8], output "logits" [1,10]
    samples/digits_calib.npz     calibration split  (input: [N,1,8,8])
    samples/digits_test.npz      labelled test split (input, labels)

Architecture: Conv3x3(1→16)·ReLU → Conv3x3(16→32)·BN·ReLU → MaxPool2 → Conv3x3(32→64)·ReLU
→ MaxPool2 → Flatten → Gemm(256→128)·ReLU → Dropout → Gemm(128→10).  The exported graph keeps
the BatchNormalization and Dropout nodes so that the prepare passes have real work.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).parent
SEED = 0


def im2col(x: np.ndarray) -> np.ndarray:
    """[B, C, H, W] → [B·H·W, C·9] patches for a 3×3 conv with padding 1."""
    b, c, h, w = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([p[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=2)  # B,C,9,H,W
    return cols.transpose(0, 3, 4, 1, 2).reshape(b * h * w, c * 9)


def col2im(cols: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    b, c, h, w = shape
    cols = cols.reshape(b, h, w, c, 9).transpose(0, 3, 4, 1, 2)
    p = np.zeros((b, c, h + 2, w + 2), cols.dtype)
    for k, (i, j) in enumerate((i, j) for i in range(3) for j in range(3)):
        p[:, :, i : i + h, j : j + w] += cols[:, :, k]
    return p[:, :, 1:-1, 1:-1]


class Conv:
    def __init__(self, cin, cout, rng):
        self.w = rng.normal(0, np.sqrt(2 / (cin * 9)), (cout, cin, 3, 3)).astype(np.float32)
        self.b = np.zeros(cout, np.float32)

    def forward(self, x):
        self.shape, self.cols = x.shape, im2col(x)
        b, _, h, w = x.shape
        y = self.cols @ self.w.reshape(len(self.b), -1).T + self.b
        return y.reshape(b, h, w, -1).transpose(0, 3, 1, 2)

    def backward(self, dy):
        dy2 = dy.transpose(0, 2, 3, 1).reshape(-1, len(self.b))
        self.grads = [(dy2.T @ self.cols).reshape(self.w.shape), dy2.sum(0)]
        return col2im(dy2 @ self.w.reshape(len(self.b), -1), self.shape)

    params = property(lambda self: [self.w, self.b])


class BatchNorm:
    def __init__(self, c):
        self.gamma, self.beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        self.mean, self.var = np.zeros(c, np.float32), np.ones(c, np.float32)

    def forward(self, x, train):
        if train:
            mu, var = x.mean((0, 2, 3)), x.var((0, 2, 3))
            self.mean = 0.9 * self.mean + 0.1 * mu
            self.var = 0.9 * self.var + 0.1 * var
        else:
            mu, var = self.mean, self.var
        self.xhat = (x - mu[None, :, None, None]) / np.sqrt(var + 1e-5)[None, :, None, None]
        self.inv = 1 / np.sqrt(var + 1e-5)
        return self.gamma[None, :, None, None] * self.xhat + self.beta[None, :, None, None]

    def backward(self, dy):
        n = dy.shape[0] * dy.shape[2] * dy.shape[3]
        self.grads = [(dy * self.xhat).sum((0, 2, 3)), dy.sum((0, 2, 3))]
        dxhat = dy * self.gamma[None, :, None, None]
        return (self.inv[None, :, None, None] / n) * (
            n * dxhat
            - dxhat.sum((0, 2, 3))[None, :, None, None]
            - self.xhat * (dxhat * self.xhat).sum((0, 2, 3))[None, :, None, None]
        )

    params = property(lambda self: [self.gamma, self.beta])


class Dense:
    def __init__(self, nin, nout, rng):
        self.w = rng.normal(0, np.sqrt(2 / nin), (nin, nout)).astype(np.float32)
        self.b = np.zeros(nout, np.float32)

    def forward(self, x):
        self.x = x
        return x @ self.w + self.b

    def backward(self, dy):
        self.grads = [self.x.T @ dy, dy.sum(0)]
        return dy @ self.w.T

    params = property(lambda self: [self.w, self.b])


def maxpool_forward(x):
    b, c, h, w = x.shape
    r = x.reshape(b, c, h // 2, 2, w // 2, 2)
    y = r.max((3, 5))
    mask = r == y[:, :, :, None, :, None]
    return y, mask


def maxpool_backward(dy, mask):
    d = mask * dy[:, :, :, None, :, None]
    b, c, h, _, w, _ = d.shape
    return d.reshape(b, c, h * 2, w * 2)


class Net:
    def __init__(self, rng):
        self.c1, self.c2, self.bn, self.c3 = Conv(1, 16, rng), Conv(16, 32, rng), BatchNorm(32), Conv(32, 64, rng)
        self.d1, self.d2 = Dense(256, 128, rng), Dense(128, 10, rng)
        self.layers = [self.c1, self.c2, self.bn, self.c3, self.d1, self.d2]

    def forward(self, x, train=False):
        a1 = np.maximum(self.c1.forward(x), 0)
        z2 = self.bn.forward(self.c2.forward(a1), train)
        self.m2 = z2 > 0
        p2, self.k2 = maxpool_forward(z2 * self.m2)
        z3 = self.c3.forward(p2)
        self.m3 = z3 > 0
        p3, self.k3 = maxpool_forward(z3 * self.m3)
        self.m1 = a1 > 0
        z4 = self.d1.forward(p3.reshape(len(x), -1))
        self.m4 = z4 > 0
        return self.d2.forward(z4 * self.m4)

    def backward(self, dlogits):
        d = self.d1.backward(self.d2.backward(dlogits) * self.m4).reshape(-1, 64, 2, 2)
        d = self.c3.backward(maxpool_backward(d, self.k3) * self.m3)
        d = self.bn.backward(maxpool_backward(d, self.k2) * self.m2)
        self.c1.backward(self.c2.backward(d) * self.m1)


def train(net, x, y, epochs=40, lr=2e-3, batch=32, seed=SEED):
    rng = np.random.default_rng(seed)
    params = [p for layer in net.layers for p in layer.params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    t = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            logits = net.forward(x[idx], train=True)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            net.backward(p / len(idx))
            grads = [g for layer in net.layers for g in layer.grads]
            t += 1
            for k, (prm, g) in enumerate(zip(params, grads, strict=True)):
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                prm -= lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)


def export(net: Net, path: Path) -> None:
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    inits = {
        "conv1.w": net.c1.w,
        "conv1.b": net.c1.b,
        "conv2.w": net.c2.w,
        "conv2.b": net.c2.b,
        "bn.gamma": net.bn.gamma,
        "bn.beta": net.bn.beta,
        "bn.mean": net.bn.mean,
        "bn.var": net.bn.var,
        "conv3.w": net.c3.w,
        "conv3.b": net.c3.b,
        "fc1.w": net.d1.w,
        "fc1.b": net.d1.b,
        "fc2.w": net.d2.w,
        "fc2.b": net.d2.b,
    }
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["input", "conv1.w", "conv1.b"], ["c1"], "conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], "conv2", **conv),
        helper.make_node(
            "BatchNormalization", ["c2", "bn.gamma", "bn.beta", "bn.mean", "bn.var"], ["b2"], "bn2", epsilon=1e-5
        ),
        helper.make_node("Relu", ["b2"], ["r2"], "relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], "pool2", **pool),
        helper.make_node("Conv", ["p2", "conv3.w", "conv3.b"], ["c3"], "conv3", **conv),
        helper.make_node("Relu", ["c3"], ["r3"], "relu3"),
        helper.make_node("MaxPool", ["r3"], ["p3"], "pool3", **pool),
        helper.make_node("Flatten", ["p3"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["g1"], "fc1"),
        helper.make_node("Relu", ["g1"], ["r4"], "relu4"),
        helper.make_node("Dropout", ["r4"], ["d4"], "dropout"),
        helper.make_node("Gemm", ["d4", "fc2.w", "fc2.b"], ["logits"], "fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(f32(a), k) for k, a in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="qcompile-sample")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def main() -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=SEED, stratify=y)
    x_calib, x_test, y_calib, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=SEED, stratify=y_rest
    )
    net = Net(np.random.default_rng(SEED))
    train(net, x_train, y_train)
    acc = float(np.mean(net.forward(x_test).argmax(1) == y_test))
    export(net, HERE / "digits_cnn.onnx")
    np.savez_compressed(HERE / "digits_calib.npz", input=x_calib, labels=y_calib)
    np.savez_compressed(HERE / "digits_test.npz", input=x_test, labels=y_test)
    print(f"trained on {len(x_train)} digits; float test accuracy {100 * acc:.2f}% on {len(x_test)}")


if __name__ == "__main__":
    main()
