"""Calibration memory does not grow with the number of samples: peak RSS of a fresh
`qcompile compile` on 24 and on 240 detector-sized (3×640×640) samples, 1.1 GB apart
on disk, with the same evaluation set."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.support.huge_model import compile_peak_rss

DETECTOR = """<ir_version: 8, opset_import: ["": 17]>
g (float[1, 3, 640, 640] x) => (float[1, 1, 160, 160] y)
<float[8, 3, 3, 3] w1 = {%s}, float[8, 8, 3, 3] w2 = {%s}, float[1, 8, 1, 1] w3 = {%s}> {
    a = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (x, w1)
    b = Relu(a)
    c = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (b, w2)
    d = Relu(c)
    y = Conv(d, w3)
}"""


def _write_samples(path, n, rng):
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 1, 3, 640, 640))
    for i in range(n):
        arr[i] = rng.uniform(-1, 1, (1, 3, 640, 640)).astype(np.float32)
    arr.flush()
    del arr


@pytest.mark.slow
def test_peak_rss_is_flat_in_the_number_of_calibration_samples(tmp_path):
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.3, n).round(3) for n in (8 * 3 * 9, 8 * 8 * 9, 8)]
    model = onnx.parser.parse_model(DETECTOR % tuple(", ".join(map(str, w)) for w in weights))
    onnx.save(model, tmp_path / "det.onnx")
    _write_samples(tmp_path / "eval.npy", 4, rng)
    peaks = {}
    for n in (24, 240):
        _write_samples(tmp_path / f"calib{n}.npy", n, rng)
        code, peaks[n], err = compile_peak_rss(
            [
                "compile",
                str(tmp_path / "det.onnx"),
                "--calib",
                str(tmp_path / f"calib{n}.npy"),
                "--eval",
                str(tmp_path / "eval.npy"),
                "--no-latency",
                "-o",
                str(tmp_path / f"out{n}"),
            ]
        )
        assert code == 0, err
        (tmp_path / f"calib{n}.npy").unlink()
    growth = peaks[240] - peaks[24]
    data_growth = 216 * 3 * 640 * 640 * 4
    print(
        f"\ncalibration peak RSS: 24 samples {peaks[24] / 2**20:.0f} MiB, 240 samples {peaks[240] / 2**20:.0f} MiB "
        f"(+{growth / 2**20:.0f} MiB for +{data_growth / 2**20:.0f} MiB of samples)"
    )
    assert growth < 0.05 * data_growth, f"calibration keeps samples in memory: {peaks}"
