"""Image files: validation of user-supplied files, atomic writes, and sample grids."""

from __future__ import annotations

import base64
import io
import os
from enum import Enum

from PIL import Image, UnidentifiedImageError


class ImageStatus(str, Enum):  # noqa: UP042 (StrEnum would change how members print)
    OK = "ok"
    CONVERTED = "converted"  # a CMYK/RGBA/grayscale/palette file accepted under non_rgb="convert"
    EMPTY = "empty"
    CORRUPT = "corrupt"
    TRUNCATED = "truncated"
    NON_RGB = "non_rgb"  # skipped under non_rgb="skip"
    MISSING = "missing"  # no file at the path (a moved pool image, a KNN hit from another machine)
    TOO_LARGE = "too_large"  # more pixels than PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)

    @property
    def usable(self) -> bool:
        return self in (ImageStatus.OK, ImageStatus.CONVERTED)


def inspect_image(path: str | os.PathLike, non_rgb: str = "skip") -> ImageStatus:
    """Decode ``path`` fully and say whether it can be used as a training image.

    A full decode is what catches truncated files (``Image.verify`` does not). ``non_rgb`` is the
    profile's ``split.non_rgb`` setting: ``skip`` rejects CMYK/RGBA/grayscale/palette files, ``convert``
    accepts them (the loader converts to RGB). A missing file and an image over PIL's pixel limit
    (a decompression bomb, or a huge scan: decoding it would exhaust memory) are statuses too, never
    exceptions, so one bad file is skipped and counted instead of failing its whole partition.
    """
    try:
        if os.path.getsize(path) == 0:
            return ImageStatus.EMPTY
    except FileNotFoundError:
        return ImageStatus.MISSING
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
    except Image.DecompressionBombError:
        return ImageStatus.TOO_LARGE
    except UnidentifiedImageError:
        return ImageStatus.CORRUPT
    except OSError as error:
        # PIL words it "image file is truncated (…)" or "Truncated File Read", depending on where it stops.
        return ImageStatus.TRUNCATED if "truncated" in str(error).lower() else ImageStatus.CORRUPT
    except (ValueError, SyntaxError):
        return ImageStatus.CORRUPT
    if mode == "RGB":
        return ImageStatus.OK
    return ImageStatus.CONVERTED if non_rgb == "convert" else ImageStatus.NON_RGB


def load_rgb(path: str | os.PathLike) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def image_grid(rows: list[list[str | os.PathLike]], cell: int = 32, pad: int = 2) -> Image.Image:
    """A grid with one row per list of image paths (e.g. one row per class)."""
    columns = max((len(r) for r in rows), default=0)
    grid = Image.new("RGB", (pad + columns * (cell + pad), pad + len(rows) * (cell + pad)), "white")
    for y, row in enumerate(rows):
        for x, path in enumerate(row):
            tile = load_rgb(path).resize((cell, cell), Image.Resampling.BILINEAR)
            grid.paste(tile, (pad + x * (cell + pad), pad + y * (cell + pad)))
    return grid


def png_data_uri_markdown(image: Image.Image, alt: str) -> str:
    """Markdown that embeds ``image`` inline, so the Dagster UI shows it in the metadata panel."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"
