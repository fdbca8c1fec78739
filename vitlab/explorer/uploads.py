"""Uploaded files made safe for the model: any PNG, JPEG, GIF or WebP in, a uint8 (3, S, S) image or a clear error.

Grayscale, RGBA, palette, 1-bit, CMYK and 16-bit images are converted; EXIF rotation is followed; an animated GIF
or WebP shows its first frame (and says so); tiny files, truncated files and decompression bombs are refused with an
`UploadError` whose message says what to upload instead. A bomb is refused from its header, before any pixel is
decoded (tests/test_uploads_fuzz.py checks that nothing is loaded).
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from vitlab.errors import VitlabError

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # a 25 MB image file is already a very large photo
MAX_UPLOAD_PIXELS = 50_000_000  # header says more than this: refuse before decoding (decompression bombs)
MIN_UPLOAD_SIDE = 8  # pixels; smaller holds too little to look at
FORMATS = ("PNG", "JPEG", "GIF", "WEBP")  # what Pillow may open an upload as: no other decoder is reached
EXTENSIONS = ("png", "jpg", "jpeg", "gif", "webp")  # the file names the page's uploader offers: FORMATS' files
# What Pillow's decoders raise on damaged files. Beyond OSError & co, fuzzing found IndexError (a GIF cut inside an
# extension block, while counting frames), struct.error and KeyError (headers with impossible fields).
DAMAGED = (OSError, SyntaxError, ValueError, EOFError, MemoryError, IndexError, KeyError, struct.error)


class UploadError(VitlabError):
    """An uploaded file cannot be used as an image; the message says why and what to upload instead."""


@dataclass(frozen=True)
class PreparedImage:
    """An upload made ready for the model."""

    image: Tensor  # uint8 (3, S, S), S = the model's input size
    notes: tuple[str, ...]  # what was changed on the way, one sentence each (converted, cropped, upscaled)


def preprocess_upload(data: bytes, image_size: int) -> PreparedImage:
    """Decode an uploaded PNG, JPEG, GIF or WebP into the model's input: uint8 (3, image_size, image_size).

    EXIF rotation is applied; grayscale, palette, 1-bit, 16-bit and CMYK become RGB; transparency is laid on white;
    an animation gives its first frame; a non-square image is cropped to its centre square; any size is resized to
    image_size.

    Raises:
        UploadError: empty, too large, not one of FORMATS, truncated or damaged, a decompression bomb (huge pixel
            count in a small file), or smaller than MIN_UPLOAD_SIDE pixels. The message says what to do.
    """
    if not data:
        raise UploadError("The uploaded file is empty. Upload a PNG, JPEG, GIF or WebP image.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadError(
            f"The file is {len(data) / 2**20:.0f} MB; the explorer takes images up to {MAX_UPLOAD_BYTES // 2**20} MB. "
            f"Upload a smaller copy (the model sees {image_size}x{image_size} pixels anyway)."
        )
    picture, (width, height), frames = _decode(data, image_size)
    if min(width, height) < MIN_UPLOAD_SIDE:
        raise UploadError(
            f"The image is only {width}x{height} pixels; the explorer needs at least "
            f"{MIN_UPLOAD_SIDE}x{MIN_UPLOAD_SIDE} to show anything. Upload a larger image."
        )
    rgb, notes = _to_rgb(picture)
    if frames > 1:
        notes.insert(0, f"Animated ({frames} frames): showing the first frame; the model takes one still image.")
    if width != height:
        notes.append(f"Cropped from {width}x{height} to its centre square: the model takes square images.")
    if min(width, height) < image_size:
        notes.append(
            f"Upscaled: the image ({width}x{height}) is smaller than the model's {image_size}x{image_size} input, "
            f"so it and its attention maps look blurry."
        )
    decoded_width, decoded_height = rgb.size  # smaller than width x height when a JPEG was decoded in draft mode
    side = min(decoded_width, decoded_height)
    centre = (
        (decoded_width - side) // 2, (decoded_height - side) // 2,
        (decoded_width + side) // 2, (decoded_height + side) // 2,
    )
    square = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC, box=centre, reducing_gap=3.0)
    pixels = torch.from_numpy(np.asarray(square, dtype=np.uint8).copy())  # (S, S, 3)
    return PreparedImage(image=pixels.permute(2, 0, 1).contiguous(), notes=tuple(notes))  # (3, S, S)


def _decode(data: bytes, image_size: int) -> tuple[Image.Image, tuple[int, int], int]:
    """Decode one of FORMATS, refusing bombs and damaged files: the picture (its first frame), its (width, height)
    as seen, and how many frames the file holds (1 unless animated).

    A big JPEG is decoded at reduced scale (at least 2 * image_size per side), so the picture may be smaller than
    the (width, height) returned, which are the file's own, after EXIF rotation.
    """
    bomb = UploadError(
        f"The image claims more than {MAX_UPLOAD_PIXELS / 1e6:.0f} million pixels, which would take too much "
        f"memory to decode (it may be a decompression bomb). Upload a smaller copy."
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            if picture.width * picture.height > MAX_UPLOAD_PIXELS:
                raise bomb
            stored = picture.size  # the file's own width and height
            frames = getattr(picture, "n_frames", 1)  # counted before load: seeking back leaves frame 0 to decode
            if picture.format == "JPEG":
                picture.draft("RGB", (2 * image_size, 2 * image_size))  # decode a big JPEG at reduced scale
            picture.load()
            decoded = picture.size
            picture = ImageOps.exif_transpose(picture)
            width, height = stored if picture.size == decoded else stored[::-1]  # as seen, after EXIF rotation
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise bomb from None
    except UnidentifiedImageError:
        raise UploadError("This file is not a PNG, JPEG, GIF or WebP image. Upload a .png, .jpg, .gif or .webp "
                          "picture.") from None
    except DAMAGED as error:
        raise UploadError(
            f"The image could not be decoded: it looks truncated or damaged ({error}). Save or export it again "
            f"and upload the new file."
        ) from None
    return picture, (width, height), frames


def _to_rgb(picture: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any PIL mode -> RGB, with a note when something was converted."""
    mode = picture.mode
    if mode == "RGB":
        return picture, []
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit grayscale (PNG's, read as I;16 or I): to 8 bits
        values = np.asarray(picture, dtype=np.float64)  # (H, W) in 0..65535
        # Always the 16-bit range: a dark 16-bit image stays dark (scaling by its own maximum would brighten it).
        gray = Image.fromarray(np.clip(np.round(values / 257), 0, 255).astype(np.uint8))
        return gray.convert("RGB"), ["Converted from 16-bit grayscale to colour (RGB): the model takes 3 channels."]
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in picture.info):
        background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        background.alpha_composite(picture.convert("RGBA"))
        return background.convert("RGB"), ["Transparent parts were laid on white: the model takes RGB without alpha."]
    names = {"L": "grayscale", "1": "black-and-white", "P": "palette", "CMYK": "CMYK", "YCbCr": "YCbCr"}
    return picture.convert("RGB"), [f"Converted from {names.get(mode, mode)} to colour (RGB): the model takes RGB."]


def image_key(data: bytes) -> str:
    """A short content hash that names an uploaded file in caches."""
    return hashlib.sha256(data).hexdigest()[:16]

