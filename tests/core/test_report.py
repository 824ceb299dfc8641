"""The card's plots and HTML page: real PNGs, one self-contained page, checked in a real browser."""

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import qcompile
from qcompile.report import plots
from tests.passes.test_sensitivity import planted_chain


@pytest.fixture(scope="module")
def hybrid():
    rng = np.random.default_rng(5)
    data = [{"x": np.abs(rng.normal(size=(1, 16))).astype(np.float32)} for _ in range(24)]
    return qcompile.compile(
        planted_chain(np.random.default_rng(1234)),
        calibration=data,
        policy="hybrid",
        metric="sqnr",
        floor=30,
        measure_latency=False,
    )


def test_a_search_gets_two_plots_that_decode(hybrid):
    images = plots(hybrid.card)
    assert set(images) == {"sensitivity.png", "tradeoff.png"}
    for data in images.values():
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.format == "PNG" and image.width > 300 and image.height > 100


def test_naive_has_no_search_to_plot():
    rng = np.random.default_rng(0)
    data = [{"x": np.abs(rng.normal(size=(1, 16))).astype(np.float32)} for _ in range(8)]
    result = qcompile.compile(planted_chain(rng), calibration=data, measure_latency=False)
    assert plots(result.card) == {}


def test_saved_card_links_its_plots_and_the_html_page_carries_them(hybrid, tmp_path):
    files = hybrid.save(tmp_path, report=True)
    markdown = files["card_md"].read_text()
    assert "![sensitivity.png](sensitivity.png)" in markdown and files["tradeoff"].exists()
    page = files["card_html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing to fetch: the page travels alone


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_the_page_loads_in_headless_chromium_and_its_images_decode(hybrid, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: `make test` installs the Debian package when it can (root and apt-get)")
    files = hybrid.save(tmp_path, report=True)
    probe = tmp_path / "probe.html"  # the page, plus a script that writes what the browser decoded into the DOM
    script = (
        "<script>window.addEventListener('load',()=>{const s=[...document.images].map("
        "i=>i.complete&&i.naturalWidth>0?'ok':'broken');"
        "document.body.setAttribute('data-images',s.join(','));});</script>"
    )
    probe.write_text(files["card_html"].read_text().replace("</body>", script + "</body>"))
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'data-images="([^"]*)"', run.stdout)
    assert found is not None, run.stdout[:500]
    assert found.group(1) == "ok,ok"
    assert "Quantization card" in run.stdout
