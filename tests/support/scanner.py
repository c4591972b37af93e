"""A till's scanner: what zxing-cpp reads from a picture, as a barcode scanner would."""

from __future__ import annotations

import io
from dataclasses import dataclass

import resvg_py
import zxingcpp
from PIL import Image

LIGHT = 128  # grey levels at or above this read as light


@dataclass(frozen=True)
class Scanned:
    text: str
    format: str  # zxing-cpp's name of the symbology: "QRCode", "MicroQRCode", …
    version: int  # of a QR code: 1 is 21 modules wide, each version 4 more


def picture(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).convert("L")


def drawn(svg: str) -> bytes:
    """An SVG document as a PNG, drawn by resvg at its own size on a transparent canvas (which
    reads as dark: the document must draw its own light background)."""
    return resvg_py.svg_to_bytes(svg_string=svg)


def scan(png: bytes) -> list[Scanned]:
    """Every barcode zxing-cpp finds in a PNG picture (a screenshot, a drawn SVG)."""
    return [
        Scanned(found.text, found.format.name, int(found.extra.get("Version", 0)))
        for found in zxingcpp.read_barcodes(picture(png))
    ]


def quiet_zone(png: bytes, modules: int) -> int:
    """How many modules of light margin a picture has around everything dark in it, for a symbol
    ``modules`` wide (the margin a scanner needs to find a QR code is 4)."""
    grey = picture(png)
    dark = grey.point(lambda level: 255 if level < LIGHT else 0).getbbox()
    assert dark is not None, "nothing dark in the picture"
    left, top, right, bottom = dark
    margin = min(left, top, grey.width - right, grey.height - bottom)
    return round(margin / ((right - left) / modules))
