import logging

import numpy as np
from conftest import make_image

from petal.data.cache import DecodeCache
from petal.data.decode import decode_image
from petal.data.index import index_folder


def test_second_load_decodes_nothing_and_serves_the_same_pixels(tmp_path, image_folder, caplog):
    folder = index_folder(image_folder)
    cache = DecodeCache(tmp_path / "c", (16, 16))
    first = cache.load(folder)
    with caplog.at_level(logging.INFO, logger="petal.data.cache"):
        second = DecodeCache(tmp_path / "c", (16, 16)).load(folder)

    assert first.computed == len(folder) and second.computed == 0
    assert "decoded 0 images, 30 read from the decode cache" in caplog.text
    np.testing.assert_array_equal(second.gather(np.arange(len(second))), first.gather(np.arange(len(first))))


def test_cached_pixels_are_exactly_what_decode_image_returns(tmp_path, image_folder):
    folder = index_folder(image_folder)
    images = DecodeCache(tmp_path / "c", (16, 20)).load(folder)
    for position in (0, 7, len(images) - 1):
        expected = decode_image(folder.absolute(images.paths[position]), (16, 20))
        np.testing.assert_array_equal(images.gather([position])[0], expected)


def test_a_changed_file_is_decoded_again(tmp_path, image_folder):
    folder = index_folder(image_folder)
    DecodeCache(tmp_path / "c", (16, 16)).load(folder)
    make_image(image_folder / folder.paths[0], (1, 2, 3), seed=999)
    assert DecodeCache(tmp_path / "c", (16, 16)).load(folder).computed == 1


def test_another_image_size_is_another_cache(tmp_path, image_folder):
    folder = index_folder(image_folder)
    DecodeCache(tmp_path / "c", (16, 16)).load(folder)
    assert DecodeCache(tmp_path / "c", (20, 20)).load(folder).computed == len(folder)


def test_undecodable_files_are_left_out_with_their_reason(tmp_path, image_folder):
    (image_folder / "red" / "broken.jpg").write_text("not a jpeg")
    (image_folder / "blue" / "empty.png").write_bytes(b"")
    folder = index_folder(image_folder)

    images = DecodeCache(tmp_path / "c", (16, 16)).load(folder)

    assert set(images.failures) == {"red/broken.jpg", "blue/empty.png"}
    assert "not an image" in images.failures["red/broken.jpg"]
    assert len(images) == len(folder) - 2
    assert DecodeCache(tmp_path / "c", (16, 16)).load(folder).computed == 0  # failures are remembered too


def test_shards_hold_a_bounded_number_of_images(tmp_path, image_folder, monkeypatch):
    monkeypatch.setattr("petal.data.cache.SHARD_SIZE", 8)
    images = DecodeCache(tmp_path / "c", (16, 16)).load(index_folder(image_folder))
    assert len(images.shard_paths) == 4  # 30 images: 8 + 8 + 8 + 6
    assert all(np.load(p, mmap_mode="r").shape[0] <= 8 for p in images.shard_paths)


def test_training_images_are_fed_upright_when_exif_says_rotated(tmp_path, image_folder):
    from PIL import Image

    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :30] = (255, 0, 0)
    upright[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated 90 degrees counter-clockwise; displayed turned back
    Image.fromarray(np.rot90(upright, k=1)).save(image_folder / "red" / "zz_phone.jpg", exif=exif.tobytes(), quality=95)
    images = DecodeCache(tmp_path / "c", (40, 60)).load(index_folder(image_folder))

    fed = images.gather([images.paths.index("red/zz_phone.jpg")])[0]

    assert fed[:, :20, 0].mean() > 200 and fed[:, -20:, 2].mean() > 200  # red left, blue right: upright


def test_reading_every_cached_row_keeps_resident_memory_at_about_a_batch(tmp_path):
    """An epoch reads rows through the page cache, not a memory map, so the process's resident size does
    not grow by the size of the cache (a memory map would add all 60 MB here)."""
    import psutil

    from petal.data.cache import CachedRows, ShardStore

    rng = np.random.default_rng(0)
    store = ShardStore(tmp_path / "store")
    keys = [f"k{i}" for i in range(800)]
    for start in range(0, 800, 400):
        store.write_shard(keys[start:start + 400], list(rng.integers(0, 255, (400, 160, 160, 3), dtype=np.uint8)), {})
    rows = CachedRows(folder=None, row_shape=(160, 160, 3), dtype="uint8",
                      shard_paths=[store.dir / f"{name}.npy" for name in store.shard_names],
                      shard_of=np.asarray([store.index[k][0] for k in keys], np.int32),
                      row_of=np.asarray([store.index[k][1] for k in keys], np.int32),
                      usable=np.arange(800), keys=keys, failures={}, computed=0)
    before = psutil.Process().memory_info().rss
    for start in range(0, 800, 32):
        rows.gather(np.arange(start, min(start + 32, 800)))
    assert psutil.Process().memory_info().rss - before < 20e6


def test_a_shard_cut_short_is_removed_and_its_images_decoded_again_not_an_error_mid_epoch(tmp_path, image_folder, caplog):
    folder = index_folder(image_folder)
    first = DecodeCache(tmp_path / "c", (16, 16)).load(folder)
    pixels = first.gather(np.arange(len(first)))
    (shard,) = (tmp_path / "c").rglob("shard-*.npy")
    with open(shard, "r+b") as f:  # a disk fault, or an edit
        f.truncate(shard.stat().st_size - 100)
    with caplog.at_level(logging.WARNING):
        again = DecodeCache(tmp_path / "c", (16, 16)).load(folder)
    assert again.computed == len(folder) and "damaged" in caplog.text and not shard.exists()
    assert np.array_equal(again.gather(np.arange(len(again))), pixels)
