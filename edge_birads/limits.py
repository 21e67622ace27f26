"""Limits applied to every input file before its pixels are decoded.

They live apart from decode.py so the command line can show and override
them without importing OpenCV just to print ``--help``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_birads.errors import InputError


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds applied before decoding; configurable for unusual scanners."""

    max_file_bytes: int = 512 * 1024 * 1024
    max_pixels: int = 120_000_000  # a 12000 x 10000 full-field DICOM fits; 30000 x 30000 does not
    min_side: int = 8  # a 1x1 "image" would give a confident answer about nothing
    max_aspect: float = 20.0  # mammograms are about 1.3:1; a 10x100000 strip is not one
    max_jpeg_scans: int = 100  # a progressive JPEG is decoded once per scan; encoders write about 10
    max_seconds: float = 60.0  # per-file decode + preprocess time limit (0 = none); see deadline.py


def file_size(size: int) -> str:
    """A size a person reads at a glance, with the exact byte count beside it."""
    if size < 1024:
        return f"{size} bytes"
    scaled, unit = (size / 2**20, "MiB") if size >= 2**20 else (size / 1024, "KiB")
    return f"{scaled:.1f} {unit} ({size} bytes)"


def check_file_size(size: int, limits: DecodeLimits) -> None:
    """Refuse a file larger than the limit (--max-file-mb) before reading it; both sizes with their units."""
    if size > limits.max_file_bytes:
        raise InputError(f"file is {file_size(size)}, over the limit of {file_size(limits.max_file_bytes)}")


def check_size(width: int, height: int, limits: DecodeLimits) -> None:
    """Refuse sizes no mammogram has, before any pixel is decoded when the header allows."""
    if width <= 0 or height <= 0:
        raise InputError(f"image header gives an invalid size {width}x{height}")
    if width * height > limits.max_pixels:
        raise InputError(f"image is {width}x{height} pixels, over the limit of {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise InputError(f"image is {width}x{height} pixels, too small to be a mammogram (minimum {limits.min_side} pixels a side)")
    if max(width, height) > limits.max_aspect * min(width, height):
        raise InputError(f"image is {width}x{height} pixels, an aspect ratio no mammogram has (limit {limits.max_aspect:g}:1)")


DEFAULT_LIMITS = DecodeLimits()
