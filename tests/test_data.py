import os
import subprocess

import numpy as np
import pytest
from conftest import PETAL, make_folder, make_image

from petal.data.index import index_folder, read_file_list, write_file_list
from petal.data.split import split_folder
from petal.errors import ConfigError, DataError


def keras_file_lists(root, seed, val_split):
    import keras

    lists = []
    for subset in ("training", "validation"):
        ds = keras.utils.image_dataset_from_directory(
            root, validation_split=val_split, subset=subset, seed=seed, image_size=(16, 16), batch_size=4, verbose=False
        )
        lists.append([os.path.relpath(p, root) for p in ds.file_paths])
    return lists


@pytest.mark.parametrize("seed,val_split", [(123, 0.2), (7, 0.3), (2024, 0.5)])
def test_keras_split_picks_the_same_files_as_image_dataset_from_directory(tmp_path, seed, val_split):
    root = make_folder(tmp_path / "photos", per_class=13, suffixes=(".jpg", ".png", ".JPEG", ".bmp", ".gif"))
    make_image(root / "red" / "nested" / "deeper.jpg", (200, 0, 0))  # sub-folders count as the class
    keras_train, keras_val = keras_file_lists(root, seed, val_split)

    split = split_folder(index_folder(root), val_split=val_split, seed=seed)

    assert list(split.train.paths) == keras_train
    assert list(split.validation.paths) == keras_val


def test_keras_split_on_the_tutorial_numbers(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=20)
    split = split_folder(index_folder(root), 0.2, 123)
    assert (len(split.train), len(split.validation)) == (48, 12)


def test_stratified_split_takes_the_same_fraction_of_every_class(tmp_path):
    root = make_folder(tmp_path / "photos", per_class=10)
    for i in range(30):
        make_image(root / "red" / f"extra_{i}.jpg", (200, 0, 0), seed=i)

    split = split_folder(index_folder(root), 0.2, 123, method="stratified")

    assert split.validation.counts() == {"blue": 2, "green": 2, "red": 8}
    assert set(split.train.paths).isdisjoint(split.validation.paths)
    assert len(split.train) + len(split.validation) == 60


def test_split_is_reproducible_and_changes_with_the_seed(image_folder):
    folder = index_folder(image_folder)
    first = split_folder(folder, 0.2, 1).validation.paths
    assert split_folder(folder, 0.2, 1).validation.paths == first
    assert split_folder(folder, 0.2, 2).validation.paths != first


def test_file_list_round_trips(tmp_path, image_folder):
    folder = index_folder(image_folder)
    write_file_list(tmp_path / "list.csv", folder)
    again = read_file_list(tmp_path / "list.csv", image_folder, folder.class_names)
    assert again.paths == folder.paths
    np.testing.assert_array_equal(again.labels, folder.labels)


def test_hidden_folders_and_other_files_are_not_classes_or_images(image_folder):
    (image_folder / ".thumbnails").mkdir()
    make_image(image_folder / ".thumbnails" / "x.jpg", (0, 0, 0))
    (image_folder / "red" / "notes.txt").write_text("not an image")
    folder = index_folder(image_folder)
    assert folder.class_names == ("blue", "green", "red")
    assert not any(p.endswith(".txt") for p in folder.paths)


def test_missing_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        index_folder(tmp_path / "nope")


def test_loose_images_without_class_folders_explain_the_layout(tmp_path):
    make_image(tmp_path / "a.jpg", (0, 0, 0))
    with pytest.raises(DataError, match=r"found 1 image file directly in it.*one sub-folder per class"):
        index_folder(tmp_path)


def test_data_and_train_name_a_folder_they_cannot_use_the_same_way(tmp_path, monkeypatch):
    make_image(tmp_path / "flat" / "a.jpg", (0, 0, 0))
    monkeypatch.chdir(tmp_path)
    said = []
    for command in (["data", "flat"], ["train", "flat", "--model", "tutorial", "--out", "run"]):
        result = subprocess.run([PETAL, *command], capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        said.append(result.stderr.splitlines()[-1])
    assert said[0] == said[1] and said[0].startswith(f"petal: error: {tmp_path / 'flat'}: no images found")


def test_single_class_is_an_error(tmp_path):
    make_image(tmp_path / "only" / "a.jpg", (0, 0, 0))
    with pytest.raises(DataError, match="only one class"):
        index_folder(tmp_path)


def test_empty_class_folder_is_an_error_naming_it(image_folder):
    (image_folder / "yellow").mkdir()
    with pytest.raises(DataError, match="yellow"):
        index_folder(image_folder)


@pytest.mark.parametrize("val_split", [0.0, 1.0, -0.1])
def test_validation_split_out_of_range_is_rejected(image_folder, val_split):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split_folder(index_folder(image_folder), val_split=val_split)


def test_split_that_leaves_no_validation_image_is_rejected(image_folder):
    with pytest.raises(ConfigError, match="0 validation images"):
        split_folder(index_folder(image_folder), val_split=0.01)


def test_a_folder_that_comes_split_is_used_as_given(tmp_path):
    from petal.data.split import load_split

    make_folder(tmp_path / "ds" / "train", per_class=5)
    make_folder(tmp_path / "ds" / "validation", per_class=2)
    make_folder(tmp_path / "ds" / "test", per_class=1)

    split = load_split(tmp_path / "ds")

    assert split.method == "given"
    assert (len(split.train), len(split.validation), len(split.test)) == (15, 6, 3)
    assert all(p.startswith("train/") for p in split.train.paths)
    assert (tmp_path / "ds" / split.validation.paths[0]).is_file()


def test_parts_with_different_classes_are_an_error_naming_the_difference(tmp_path):
    from petal.data.split import load_split

    make_folder(tmp_path / "ds" / "train", per_class=3)
    make_folder(tmp_path / "ds" / "val", per_class=1)
    make_image(tmp_path / "ds" / "val" / "purple" / "p.jpg", (100, 0, 100))

    with pytest.raises(DataError, match=r"only in train/: none; only in val/: \['purple'\]"):
        load_split(tmp_path / "ds")


def test_class_weights_make_rare_classes_count_as_much_as_common_ones():
    from petal.training.optimization import class_weights

    weights = class_weights(np.array([0] * 8 + [1] * 2), 2)
    assert weights == {0: 10 / (2 * 8), 1: 10 / (2 * 2)}
