"""Uploads fuzzed: any bytes in -> a model input or an UploadError out, and the odd images shown right.

Every file is made here with Pillow (none is shipped). Known answers where one exists: an EXIF-rotated photo comes
out upright, a 16-bit white is 255, a transparent palette entry is white, an animation gives its first frame.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile
from streamlit.testing.v1 import AppTest

from vitlab.explorer.uploads import EXTENSIONS, PreparedImage, UploadError, preprocess_upload

SIZE = 32  # the demo model's input
APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def encode(picture: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def quadrants(width: int = 64, height: int = 64) -> Image.Image:
    """Upright: red top-left, green top-right, blue bottom-left, white bottom-right."""
    pixels = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    pixels[:h, :w], pixels[:h, w:] = COLOURS["red"], COLOURS["green"]
    pixels[h:, :w], pixels[h:, w:] = COLOURS["blue"], COLOURS["white"]
    return Image.fromarray(pixels)


def animation(format: str, **options) -> bytes:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue", "green")]
    return encode(frames[0], format, save_all=True, append_images=frames[1:], duration=100, **options)


def outcome(data: bytes) -> PreparedImage | UploadError:
    """preprocess_upload's answer; anything but an UploadError propagates and fails the test."""
    try:
        prepared = preprocess_upload(data, SIZE)
    except UploadError as error:
        assert str(error) and "\n" not in str(error)
        return error
    assert prepared.image.dtype == np.uint8 or str(prepared.image.dtype) == "torch.uint8"
    assert tuple(prepared.image.shape) == (3, SIZE, SIZE)
    return prepared


def at(prepared: PreparedImage, row: int, col: int) -> tuple[int, ...]:
    """The output's RGB at (row, col) of the SIZE x SIZE input."""
    return tuple(prepared.image[:, row, col].tolist())


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 0) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


GOOD_FILES = {
    "PNG": encode(noise(48, 48)),
    "JPEG": encode(noise(48, 48), "JPEG"),
    "GIF": encode(noise(48, 48), "GIF"),
    "WebP": encode(noise(48, 48), "WEBP"),
    "animated GIF": animation("GIF"),
    "animated WebP": animation("WEBP", lossless=True),
}
MAGIC = (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"RIFF\x00\x10\x00\x00WEBPVP8 ")


# ---------------------------------------------------------------------------------------------------------------
# Any bytes: random, behind real signatures, and real files cut at every offset
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(magic=st.sampled_from(MAGIC), body=st.binary(max_size=2048))
def test_random_bytes_give_an_upload_error_or_a_model_input(magic, body):
    outcome(magic + body)


@settings(max_examples=600, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(GOOD_FILES)), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                                              min_size=1, max_size=8))
def test_good_files_with_bytes_flipped_give_an_upload_error_or_a_model_input(name, flips):
    data = bytearray(GOOD_FILES[name])
    for offset, mask in flips:
        data[offset % len(data)] ^= mask
    outcome(bytes(data))


@pytest.mark.parametrize("name", sorted(GOOD_FILES))
def test_files_cut_at_many_offsets_give_an_upload_error_or_a_model_input(name):
    data = GOOD_FILES[name]
    offsets = sorted({*range(0, min(len(data), 200)), *range(200, len(data), max(1, len(data) // 300))})
    answers = Counter(type(outcome(data[:cut])).__name__ for cut in offsets)
    assert answers["UploadError"] >= len(offsets) // 3, answers  # most cuts lose pixels the decoder needs
    assert isinstance(outcome(data), PreparedImage)  # and the whole file is fine


# ---------------------------------------------------------------------------------------------------------------
# Decompression bombs: refused from the header, before a pixel is decoded
# ---------------------------------------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(noise(1, 1)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # keep the chunk's checksum valid
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(noise(8, 8), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)  # the logical screen
    frame = data.index(b",")  # the first image descriptor: left, top, width, height
    data[frame + 5:frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encode(noise(8, 8), "JPEG"))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_claiming(width: int, height: int) -> bytes:
    """A VP8X (extended) WebP whose canvas is width x height: 24-bit fields hold the size minus one."""
    small = encode(noise(8, 8), "WEBP", lossless=True)  # RIFF....WEBPVP8L...
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + small[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


BOMBS = {
    "PNG 60000x60000 (Pillow's own limit)": png_claiming(60_000, 60_000),
    "PNG 8000x8000 (vitlab's 50 Mpx)": png_claiming(8_000, 8_000),
    "GIF 65535x65535": gif_claiming(65_535, 65_535),
    "JPEG 65500x65500": jpeg_claiming(65_500, 65_500),
    "JPEG 9000x9000": jpeg_claiming(9_000, 9_000),
    "WebP 16383x16383": webp_claiming(16_383, 16_383),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_decompression_bombs_are_refused_before_any_pixel_is_decoded(name, monkeypatch):
    loads = []
    real_load = ImageFile.ImageFile.load

    def spying_load(self):
        loads.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    with pytest.raises(UploadError, match="decompression bomb"):
        preprocess_upload(BOMBS[name], SIZE)
    assert loads == [], f"{name}: decoding started for {loads}"


def test_an_image_just_under_the_pixel_limit_is_not_called_a_bomb():
    answer = outcome(png_claiming(7_000, 7_000))  # 49 Mpx claimed, one pixel of data: damaged, not a bomb
    assert isinstance(answer, UploadError) and "decompression bomb" not in str(answer)


# ---------------------------------------------------------------------------------------------------------------
# Odd images, shown right: known answers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("orientation", "stored_by"), [(3, 180), (6, 90), (8, -90)])
@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_exif_rotated_photos_come_out_upright(orientation, stored_by, format):
    """A camera stores the sensor's pixels and a tag saying how to turn them: 6 = turn 90 degrees clockwise."""
    upright = quadrants()
    stored = upright.rotate(stored_by, expand=True)  # PIL turns counter-clockwise: what the camera wrote
    exif = Image.Exif()
    exif[0x0112] = orientation
    prepared = outcome(encode(stored, format, exif=exif, **({"quality": 95} if format == "JPEG" else {})))
    tolerance = 0 if format == "PNG" else 12
    for (row, col), colour in {(8, 8): "red", (8, 24): "green", (24, 8): "blue", (24, 24): "white"}.items():
        assert close(at(prepared, row, col), COLOURS[colour], tolerance), (orientation, format, row, col)


def test_an_exif_rotated_wide_photo_is_cropped_as_seen():
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = quadrants(80, 40).rotate(90, expand=True)  # 40 wide, 80 high on disk; 80x40 as seen
    prepared = outcome(encode(stored, exif=exif))
    assert any("Cropped from 80x40" in note for note in prepared.notes), prepared.notes
    assert close(at(prepared, 8, 8), COLOURS["red"]) and close(at(prepared, 24, 24), COLOURS["white"])


def test_16_bit_png_keeps_its_brightness():
    values = np.full((64, 64), 65535, np.uint16)
    values[:, 32:] = 12_850  # 12850 / 257 = 50
    values[32:, :] = 255  # a dark 16-bit value: 255 / 257 rounds to 1, it must not be shown as white
    picture = Image.fromarray(values)
    assert picture.mode.startswith("I;16")
    prepared = outcome(encode(picture))
    assert at(prepared, 8, 8) == (255,) * 3 and at(prepared, 8, 24) == (50,) * 3 and at(prepared, 24, 8) == (1,) * 3
    assert any("16-bit" in note for note in prepared.notes)


def test_a_palette_png_with_transparency_lays_the_transparent_entry_on_white():
    indices = np.zeros((64, 64), np.uint8)
    indices[32:] = 1
    picture = Image.fromarray(indices, "P")
    picture.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # entry 0 black (but transparent), entry 1 red
    prepared = outcome(encode(picture, transparency=0))
    assert at(prepared, 8, 16) == COLOURS["white"] and at(prepared, 24, 16) == COLOURS["red"]


def test_grayscale_with_alpha_is_laid_on_white():
    pixels = np.zeros((64, 64, 2), np.uint8)
    pixels[..., 0] = 100
    pixels[:32, :, 1] = 255  # top opaque
    pixels[32:, :, 1] = 128  # bottom half transparent: 100 * 128/255 + 255 * 127/255 = 177.2
    prepared = outcome(encode(Image.fromarray(pixels, "LA")))
    assert at(prepared, 8, 16) == (100,) * 3 and close(at(prepared, 24, 16), (177,) * 3, 1)


def test_one_bit_black_and_white():
    pixels = np.zeros((64, 64), bool)
    pixels[32:] = True
    prepared = outcome(encode(Image.fromarray(pixels).convert("1")))
    assert at(prepared, 8, 16) == (0, 0, 0) and at(prepared, 24, 16) == (255, 255, 255)
    assert any("black-and-white" in note for note in prepared.notes)


def test_cmyk_jpeg_comes_out_in_rgb():
    prepared = outcome(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95))  # no cyan, no black
    assert close(at(prepared, 16, 16), COLOURS["red"], 8)
    assert any("CMYK" in note for note in prepared.notes)


@pytest.mark.parametrize("name", ["animated GIF", "animated WebP"])
def test_an_animation_shows_its_first_frame_and_says_so(name):
    prepared = outcome(GOOD_FILES[name])
    assert at(prepared, 16, 16) == COLOURS["red"]  # frames: red, blue, green
    assert prepared.notes[0].startswith("Animated (3 frames): showing the first frame")


# ---------------------------------------------------------------------------------------------------------------
# The page keeps serving after a bad upload
# ---------------------------------------------------------------------------------------------------------------


def test_the_explorer_shows_the_error_then_the_views_for_the_next_upload(demo_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # The app reads its own flags from sys.argv; pytest's would be refused, so give it none, as `streamlit run`.
    monkeypatch.setattr(sys, "argv", [str(APP)])
    app = AppTest.from_file(str(APP), default_timeout=300).run()
    app.radio(key="image_source").set_value("upload").run()
    # The page's uploader offers every format the explorer decodes; what a file holds is found from its bytes,
    # whatever its name says.
    assert {"." + ext for ext in EXTENSIONS} <= set(app.file_uploader(key="upload").proto.type)
    bad = {"bomb.png": (BOMBS["GIF 65535x65535"], "decompression bomb"),
           "cut.png": (GOOD_FILES["WebP"][:300], "truncated or damaged"),
           "noise.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3, "not a PNG, JPEG")}
    for file_name, (content, phrase) in bad.items():
        app.file_uploader(key="upload").set_value((file_name, content, "image/png")).run()
        assert not app.exception, (file_name, [e.message for e in app.exception])
        assert len(app.error) == 1 and phrase in app.error[0].value, (file_name, [e.value for e in app.error])
        app.file_uploader(key="upload").set_value(("fine.gif", GOOD_FILES["animated GIF"], "image/gif")).run()
        assert not app.exception and not app.error, (file_name, [e.value for e in app.error])
        assert sum(len(image.proto.imgs) for image in app.image) >= 10  # every view is drawn again
        assert any("first frame" in m.value for m in app.markdown)
