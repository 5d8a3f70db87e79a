import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from petal.data.decode import decode_image
from petal.errors import ImageError

SIZE = (24, 32)


def jpeg_bytes(pixels, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", **save_args)
    return buffer.getvalue()


def left_right_image(width=60, height=40) -> np.ndarray:
    """Red left half, blue right half: its orientation is visible after any resize."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return pixels


def test_decodes_to_rgb_uint8_of_the_asked_size(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(left_right_image()).save(path)
    array = decode_image(path, SIZE)
    assert array.shape == (24, 32, 3) and array.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    # Stored sideways: the upright picture (red left, blue right) rotated 90 degrees clockwise,
    # tagged with orientation 6 ("rotate 90 CW to display"): viewers and petal show it upright.
    upright = left_right_image(60, 40)
    stored = np.rot90(upright, k=1)  # counter-clockwise: what orientation 6 undoes
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_bytes(stored, exif=exif.tobytes(), quality=95))

    array = decode_image(path, (40, 60))

    assert array[:, :20, 0].mean() > 200 and array[:, :20, 2].mean() < 50  # red on the left
    assert array[:, -20:, 2].mean() > 200 and array[:, -20:, 0].mean() < 50  # blue on the right


def test_transparent_pixels_become_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    path = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(path)
    assert decode_image(path, (10, 10)).min() == 255


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "1"])
def test_other_colour_modes_are_converted(tmp_path, mode):
    path = tmp_path / f"img.{'tiff' if mode == 'CMYK' else 'png'}"
    Image.fromarray(left_right_image()).convert(mode).save(path)
    assert decode_image(path, SIZE).shape == (*SIZE, 3)


def test_sixteen_bit_grey_is_scaled_to_eight_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(path)
    assert decode_image(path, (8, 8)).min() == 255


def test_empty_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        decode_image(path, SIZE)


def test_text_named_jpg_is_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image"):
        decode_image(path, SIZE)


def test_truncated_jpeg_is_an_image_error(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes(left_right_image(200, 200))[:600])
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode"):
        decode_image(path, SIZE)


def test_pixel_limit_guards_against_decompression_bombs(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(path)
    with pytest.raises(ImageError, match="exceeds the limit"):
        decode_image(path, SIZE, max_pixels=300 * 299)
    assert decode_image(path, SIZE, max_pixels=300 * 300).shape == (*SIZE, 3)


VALID_JPEG = jpeg_bytes(left_right_image())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=2048),
        st.builds(lambda cut: VALID_JPEG[:cut], st.integers(0, len(VALID_JPEG))),
        st.builds(
            lambda pos, value: VALID_JPEG[:pos] + bytes([value]) + VALID_JPEG[pos + 1 :],
            st.integers(0, len(VALID_JPEG) - 1),
            st.integers(0, 255),
        ),
    )
)
def test_any_bytes_give_an_rgb_array_or_an_image_error(data):
    try:
        array = decode_image(data, SIZE)
    except ImageError:
        return
    assert array.shape == (*SIZE, 3) and array.dtype == np.uint8
