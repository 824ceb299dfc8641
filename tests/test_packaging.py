"""The package as users install it: editable (make) and regular (a wheel), with passes/ and targets/
at the top of the repository mapped to qcompile.passes and qcompile.targets."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

import qcompile
from qcompile.cli import main
from tests.helpers import ROOT, SAMPLES

PROBE = """
import sys, qcompile, qcompile.api, qcompile.passes.cleanup, qcompile.targets.ort_cpu
print(qcompile.__file__)
print(qcompile.passes.cleanup.__file__)
print('passes' in sys.modules, 'targets' in sys.modules)
"""


def _probe(cwd, env=None) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return out.stdout.split("\n")


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"qcompile {qcompile.__version__}"


def test_top_level_folders_never_shadow_the_package():
    # from the repository root, where `import passes` would find the folder itself
    core, cleanup, shadow = _probe(ROOT)[:3]
    assert shadow == "False False"
    if "site-packages" not in core:  # editable install: the package is the source tree
        assert cleanup == str(ROOT / "passes" / "cleanup.py")


@pytest.mark.slow
def test_regular_install_from_a_wheel(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("qcompile-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"qcompile/py.typed", "qcompile/passes/cleanup.py", "qcompile/targets/ort_cpu.py"} <= set(names)
    assert not [n for n in names if n.startswith(("passes/", "targets/", "tests/", "bench/"))]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    core, cleanup, shadow = _probe(tmp_path, env)[:3]
    assert core.startswith(str(site)) and cleanup == str(site / "qcompile" / "passes" / "cleanup.py")
    compiled = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, qcompile; r = qcompile.compile(sys.argv[1], calibration=sys.argv[2], "
            "measure_latency=False); print(r.card['ort_kernels'])",
            str(SAMPLES / "digits_cnn.onnx"),
            str(SAMPLES / "digits_calib.npz"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    assert compiled.stdout.strip() == "{'integer': 5, 'float': 0}"
