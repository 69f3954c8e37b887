"""Hostile pictures for the VLM tab: each case is converted with a note or refused with a
message naming the file, and nothing is decoded from a header that claims too many pixels."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tabs.vlm.images import MAX_SIDE, ImageRefused, load_image


def _png(path, im):
    im.save(path, format="PNG")
    return path


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    junk = tmp_path / "cat.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(ImageRefused, match="cat.png"):
        load_image(junk)
    full = tmp_path / "full.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(full, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageRefused, match="cut.jpg: cannot read the picture: the file is "
                                           "truncated"):
        load_image(cut)
    with pytest.raises(ImageRefused, match="no such file"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("side", [10000, 30000])  # past our limit; past PIL's too
def test_decompression_bomb_is_refused_from_its_header(tmp_path, side):
    """A tiny PNG whose header says side x side pixels is refused before decoding."""
    small = _png(tmp_path / "s.png", Image.new("RGB", (8, 8), "white")).read_bytes()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    patched = small[:8] + struct.pack(">I", 13) + chunk + \
        struct.pack(">I", zlib.crc32(chunk) & 0xFFFFFFFF) + small[33:]
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(patched)
    with pytest.raises(ImageRefused, match="bomb.png: .*decompression bomb"):
        load_image(bomb)


def test_huge_picture_is_scaled_down(tmp_path):
    big = _png(tmp_path / "big.png", Image.new("RGB", (6000, 3000), (10, 200, 30)))
    safe = load_image(big)
    assert max(safe.image.size) == MAX_SIDE and safe.image.size == (MAX_SIDE, MAX_SIDE // 2)
    assert any("scaled down from 6000 x 3000" in n for n in safe.notes)


def test_animated_cmyk_16bit_and_alpha_are_converted(tmp_path):
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    safe = load_image(gif)
    assert safe.image.mode == "RGB" and safe.image.getpixel((5, 5))[0] > 200  # red frame
    assert any("animated picture (3 frames)" in n for n in safe.notes)

    cmyk = tmp_path / "print.jpg"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(cmyk)
    safe = load_image(cmyk)
    assert safe.image.mode == "RGB" and any("CMYK" in n for n in safe.notes)

    deep = np.linspace(0, 65535, 64 * 32, dtype=np.uint16).reshape(32, 64)
    p16 = tmp_path / "deep.png"
    Image.fromarray(deep).save(p16)
    assert Image.open(p16).mode.startswith("I")
    safe = load_image(p16)
    arr = np.asarray(safe.image)
    assert safe.image.mode == "RGB" and arr.min() == 0 and arr.max() == 255  # full range kept
    assert any("16-bit" in n for n in safe.notes)

    rgba = tmp_path / "logo.png"
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(rgba)
    safe = load_image(rgba)
    assert safe.image.getpixel((3, 3)) == (255, 255, 255)  # transparent -> white, not black
