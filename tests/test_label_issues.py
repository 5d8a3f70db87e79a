"""`petal data --label-issues`: label issues, near copies and outliers from embeddings (petal.training.label_issues).

Made images of three colours, each a random 4x4 pattern half-way to its class colour, embedded by a tiny
fixed backbone (the pattern, 4x4 average-pooled) so the geometry is known; the shared-cache and command
tests use the shipped MobileNetV2 on a few of the bundled sample photos. Everything runs offline.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASS_COLOURS, PETAL
from PIL import Image

from petal.data.doctor import examine
from petal.data.split import load_split
from petal.errors import ConfigError

pytest.importorskip("cleanlab")

SIZE = 16  # what the tiny backbone sees


def pattern_image(path: Path, colour, seed: int, size: int = 64) -> Path:
    """A random 4x4 grid of colours, each half-way to `colour`, smoothly scaled up to size x size."""
    grid = np.random.default_rng(seed).integers(0, 256, (4, 4, 3)).astype(float)
    pixels = (0.5 * grid + 0.5 * np.asarray(colour)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def tiny_backbone():
    import keras

    return keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 127.5, offset=-1),
                             keras.layers.AveragePooling2D(SIZE // 4), keras.layers.Flatten()], name="tiny")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """12 images per class, plus a red image filed as blue, a JPEG quality-60 copy, and a black-and-white checkerboard."""
    root = tmp_path_factory.mktemp("label-issues") / "photos"
    for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
        for i in range(12):
            pattern_image(root / name / f"img_{i:03d}.png", colour, 100 * c + i)
    pattern_image(root / "blue" / "filed_wrong.png", CLASS_COLOURS["red"], 999)
    Image.open(root / "green" / "img_003.png").save(root / "green" / "copy_q60.jpg", quality=60)
    checker = (np.indices((64, 64)) // 16).sum(0) % 2 * 255
    Image.fromarray(checker.astype(np.uint8)).convert("RGB").save(root / "red" / "checkerboard.png")
    return root


@pytest.fixture(scope="module")
def found(messy, tmp_path_factory):
    from petal.training.label_issues import find_issues

    return find_issues(load_split(messy), cache_dir=tmp_path_factory.mktemp("cache"), backbone=tiny_backbone())


def paths_of(findings, kind):
    return {f.path for f in findings if f.kind == kind}


def test_a_photo_filed_under_the_wrong_class_is_the_worst_label_issue_with_its_real_class_suggested(found):
    issues = [f for f in found.findings if f.kind == "label-issue"]
    assert issues[0].path == "blue/filed_wrong.png"
    assert (issues[0].given, issues[0].suggested) == ("blue", "red")
    assert 0 <= issues[0].score < 0.5
    assert found.pred_probs.shape == (len(found.paths), 3) and np.allclose(found.pred_probs.sum(1), 1, atol=1e-5)
    assert len(issues) <= 3  # clean made images: little else is flagged


def test_a_folder_smaller_than_the_neighbour_vote_gets_out_of_sample_probabilities_from_fewer_neighbours():
    from petal.training.label_issues import NEIGHBOUR_VOTE, out_of_sample_probabilities

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 4)  # 12 images, 4 folds: each fold trains on 9 < NEIGHBOUR_VOTE
    features = rng.random((12, 8)) + 3 * np.eye(3, 8)[labels]
    assert len(labels) < NEIGHBOUR_VOTE

    probabilities = out_of_sample_probabilities(features, labels, folds=4)

    assert probabilities.shape == (12, 3)
    np.testing.assert_allclose(probabilities.sum(1), 1.0)
    assert (probabilities.argmax(1) == labels).all()


def test_a_re_encoded_copy_is_a_near_duplicate_with_its_distance_and_an_odd_image_an_outlier(found):
    near = [f for f in found.findings if f.kind == "near-duplicate-within-class"]
    assert [(f.path, f.detail.split(" to ")[-1]) for f in near] == [("green/img_003.png", "green/copy_q60.jpg")]
    assert 0 <= near[0].distance < 0.05
    assert paths_of(found.findings, "outlier") == {"red/checkerboard.png"}


def test_a_cropped_copy_is_found_by_matching_crops_where_its_hash_and_embedding_differ(messy, tmp_path):
    from petal.training.label_issues import find_issues

    photos = shutil.copytree(messy, tmp_path / "photos")
    Image.open(photos / "red" / "img_005.png").crop((3, 3, 64, 64)).save(photos / "red" / "copy_crop5.png")  # 5% off two edges
    found = find_issues(load_split(photos), cache_dir=tmp_path / "cache", backbone=tiny_backbone(), near_duplicate_distance=0.0)
    near = {f.path: f for f in found.findings if f.kind == "near-duplicate-within-class"}
    assert near["red/img_005.png"].hash_bits > 3  # the hash rule alone misses it
    assert set(near) == {"green/img_003.png", "red/img_005.png"}


def test_a_crop_matches_its_photo_and_another_photo_does_not(messy):
    from petal.training.label_issues import CROP_MATCH, crop_match

    photo = np.asarray(Image.open(messy / "red" / "img_005.png").resize((224, 224)))
    rows = np.stack([photo, np.asarray(Image.fromarray(photo).crop((11, 11, 224, 224)).resize((224, 224))),
                     np.asarray(Image.open(messy / "red" / "img_006.png").resize((224, 224)))])
    class InMemory:  # CachedRows' one method crop_match reads
        def gather(self, positions):
            return rows[positions]

    matches = crop_match(InMemory(), [(0, 1), (1, 0), (0, 2)])
    assert matches[0] == matches[1] >= CROP_MATCH
    assert matches[2] < CROP_MATCH


def test_findings_join_the_doctors_report_and_its_json_by_path(found, messy):
    from petal.training.label_issues import merge

    report = merge(examine(load_split(messy)), found)
    as_json = report.to_json()["findings"]
    issue = next(f for f in as_json if f["kind"] == "label-issue")
    assert issue["path"] == "blue/filed_wrong.png" and issue["given"] == "blue" and issue["suggested"] == "red"
    assert issue["severity"] == "warning" and issue["score"] < 0.5
    # the doctor's equal-hash near copy is listed once, with the measured distance
    near = [f for f in as_json if f["kind"] == "near-duplicate-within-class"]
    assert len(near) == 1 and near[0]["distance"] is not None


def test_the_contact_sheet_shows_the_suspects(found, tmp_path):
    from petal.training.label_issues import save_contact_sheet

    sheet = save_contact_sheet(found, tmp_path / "sheet.png")
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 200


def test_move_to_quarantine_moves_flagged_files_and_the_manifest_undoes_it(found, messy, tmp_path):
    from petal.data.quarantine import move_flagged, undo_move

    work = shutil.copytree(messy, tmp_path / "photos")
    manifest, moved = move_flagged(found.findings, work, tmp_path / "quarantine")
    assert moved == 2
    assert (tmp_path / "quarantine" / "blue" / "filed_wrong.png").is_file() and not (work / "blue" / "filed_wrong.png").exists()
    assert json.loads(manifest.read_text())["undo"].startswith("petal data --undo-move")
    assert undo_move(manifest) == (2, 0, [])
    assert (work / "blue" / "filed_wrong.png").is_file() and (work / "red" / "checkerboard.png").is_file()
    assert undo_move(manifest) == (0, 2, [])  # run twice: the files are counted as back, not as problems


def test_a_quarantine_inside_the_data_folder_is_refused(found, messy):
    from petal.data.quarantine import move_flagged
    from petal.errors import ConfigError

    with pytest.raises(ConfigError, match="outside the data folder"):
        move_flagged(found.findings, messy, messy / "quarantine")



def test_inside_the_data_folder_means_where_links_lead(tmp_path):
    from petal.data.index import is_inside

    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere" / "roses"
    data.mkdir()
    elsewhere.mkdir(parents=True)
    (data / "roses").symlink_to(elsewhere)
    assert not is_inside(data / "roses" / ".." / "quarantine", data)  # data/roses/.. is tmp_path/elsewhere
    assert is_inside(data / "roses" / "x", elsewhere.parent) and is_inside(data / "q" / "..", data)


def test_an_output_path_in_a_symlink_loop_is_one_line(messy, tmp_path, capsys):
    from petal.cli import main

    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    assert main(["data", str(messy), "--grid", str(loop)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loop.png" in err[0] and err[0].startswith("petal: error:")

def test_an_exclusion_list_leaves_its_files_out_and_every_other_file_keeps_its_side(messy, tmp_path):
    from petal.data.quarantine import read_exclusion_list

    listed = tmp_path / "exclude.json"
    listed.write_text(json.dumps({"findings": [{"path": "blue/filed_wrong.png", "kind": "label-issue"},
                                               {"path": "green/img_001.png", "kind": "hidden"}], "label_issues": {}}))
    (tmp_path / "exclude.txt").write_text(f"# by hand\n{messy / 'red' / 'checkerboard.png'}\n")
    assert read_exclusion_list(listed, messy) == ("blue/filed_wrong.png",)
    plain = tmp_path / "plain.json"  # `petal data --json` without --label-issues: nothing to exclude, said so
    plain.write_text(json.dumps({"findings": [{"path": "green/img_001.png", "kind": "hidden"}]}))
    with pytest.raises(ConfigError, match="made without --label-issues"):
        read_exclusion_list(plain, messy)
    elsewhere = tmp_path / "elsewhere.json"  # the report of another folder
    elsewhere.write_text(json.dumps({"root": str(tmp_path / "other-photos"), "findings": [], "label_issues": {}}))
    with pytest.raises(ConfigError, match="other-photos, not on .*its paths name other photos"):
        read_exclusion_list(elsewhere, messy)
    assert read_exclusion_list(tmp_path / "exclude.txt", messy) == ("red/checkerboard.png",)
    full = load_split(messy)
    kept = load_split(messy, exclude=("blue/filed_wrong.png",))
    assert "blue/filed_wrong.png" not in kept.train.paths + kept.validation.paths
    assert set(kept.validation.paths) == set(full.validation.paths) - {"blue/filed_wrong.png"}


def test_label_issues_share_trainings_embedding_cache(tmp_path):
    """Embeddings computed for label issues are the ones `petal train` reads: training computes none."""
    from petal.config import TrainConfig
    from petal.data.cache import ShardStore
    from petal.sample_data import sample_folder
    from petal.training.embeddings import EmbeddingCache
    from petal.training.label_issues import find_issues
    from petal.training.loop import build_classifier, decode_cache

    root = tmp_path / "sample"
    for class_dir in sorted(Path(sample_folder()).iterdir()):
        for photo in sorted(class_dir.iterdir())[:4]:
            (root / class_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, root / class_dir.name / photo.name)
    found = find_issues(load_split(root), cache_dir=tmp_path / "cache", image_size=(32, 32))
    config = TrainConfig.for_model(str(root), "mobilenet-v2", image_size=(32, 32), cache_dir=str(tmp_path / "cache"))
    cache = EmbeddingCache(tmp_path / "cache", config.model, build_classifier(config, 5).features, decode_cache(config).settings)
    assert len(ShardStore(cache.dir).index) == len(found.paths) == 20


def test_data_command_reports_label_issues_in_json_and_moves_and_undoes(tmp_path):
    from petal.sample_data import sample_folder

    root = tmp_path / "sample"
    for class_dir in sorted(Path(sample_folder()).iterdir()):
        for photo in sorted(class_dir.iterdir())[:8]:
            (root / class_dir.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, root / class_dir.name / photo.name)
    pattern_image(root / "roses" / "made.png", (40, 180, 60), 1)
    sheet, quarantine = tmp_path / "sheet.png", tmp_path / "q"
    result = subprocess.run([PETAL, "data", str(root), "--label-issues", "--json", "--contact-sheet", str(sheet), "--move-to", str(quarantine),
                             "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    flagged = {f["path"] for f in report["findings"] if f["kind"] in ("label-issue", "outlier")}
    assert report["label_issues"]["images"] == 41 and report["moved"]["files"] == len(flagged) > 0
    assert sheet.is_file() and all((quarantine / p).is_file() for p in flagged)
    undo = subprocess.run([PETAL, "data", "--undo-move", report["moved"]["manifest"]], capture_output=True, text=True)
    assert undo.returncode == 0, undo.stderr
    assert all((root / p).is_file() for p in flagged)
    again = subprocess.run([PETAL, "data", "--undo-move", report["moved"]["manifest"]], capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.startswith(f"Nothing to move back: the {len(flagged)} file"), again.stdout
    # the text report draws its sample grid after the move, from the files still there
    moved = subprocess.run([PETAL, "data", str(root), "--label-issues", "--move-to", str(tmp_path / "q2"), "--grid", str(tmp_path / "g.jpg"),
                            "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True)
    assert moved.returncode == 0 and "petal: error" not in moved.stderr, moved.stderr
    assert moved.stdout.count(f"Moved {len(flagged)} file") == 1 and f"moved {len(flagged)} file" not in moved.stderr.lower()  # said once
    assert (tmp_path / "g.jpg").is_file() and all((tmp_path / "q2" / p).is_file() for p in flagged)
    # 8 photos a class: a weak judge, and the text report says so
    from petal.cli.data_command import TRUSTED_HEAD_ACCURACY

    assert ("Caution: the head that judges the labels" in moved.stdout) == (report["label_issues"]["cross_validated_accuracy"] < TRUSTED_HEAD_ACCURACY)


@pytest.mark.parametrize("options, says", [
    (["--contact-sheet", "photos/red/img_000.png"], "outside the data folder"),  # it would overwrite a photo
    (["--grid", "photos/red/img_000.png"], "outside the data folder"),
    (["--contact-sheet", "."], "a file to write"),
    (["--move-to", "a-file"], "is a file"),
    (["--move-to", "a-file/sub"], "is a file"),
    (["--move-kinds", "label-issue,bogus", "--move-to", "q"], "kinds must be among"),
    (["--move-kinds", ",", "--move-to", "q"], "kinds must be among"),
    (["--move-kinds", "outlier"], "pass --label-issues --move-to too"),
])
def test_output_options_that_cannot_work_are_refused_before_any_embedding(messy, tmp_path, options, says):
    photos = shutil.copytree(messy, tmp_path / "photos")
    (tmp_path / "a-file").write_text("x")
    before = {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}
    result = subprocess.run([PETAL, "data", str(photos), "--label-issues", *options, "--cache-dir", str(tmp_path / "cache")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "cache").exists()  # refused before decoding or embedding anything
    assert before == {p: p.read_bytes() for p in photos.rglob("*") if p.is_file()}


def test_run_from_inside_a_class_folder_the_default_outputs_are_refused_not_written_among_the_photos(messy, tmp_path):
    photos = shutil.copytree(messy, tmp_path / "photos")
    result = subprocess.run([PETAL, "data", str(photos)], capture_output=True, text=True, cwd=photos / "red", timeout=120)
    assert result.returncode == 2 and "the sample grid (--grid) must be written outside the data folder" in result.stderr
    assert not list((photos / "red").glob("*-samples.jpg"))


def test_an_undo_whose_class_folder_became_a_file_puts_the_others_back_and_names_it(messy, tmp_path):
    from petal.data.doctor import Finding
    from petal.data.quarantine import move_flagged, undo_move

    photos = shutil.copytree(messy, tmp_path / "photos")
    findings = [Finding("red/img_000.png", "outlier", ""), Finding("blue/img_000.png", "outlier", "")]
    manifest, moved = move_flagged(findings, photos, tmp_path / "q")
    shutil.rmtree(photos / "red")
    (photos / "red").write_text("now a file")
    restored, _, problems = undo_move(manifest)
    assert restored == 1 and (photos / "blue" / "img_000.png").is_file()
    assert len(problems) == 1 and problems[0].startswith(f"red/img_000.png: its class folder {photos / 'red'} is a file now")


def test_an_undo_takes_files_only_from_the_manifests_own_folder_wherever_it_was_moved(messy, tmp_path):
    from petal.data.doctor import Finding
    from petal.data.quarantine import move_flagged, undo_move
    from petal.errors import ConfigError

    photos = shutil.copytree(messy, tmp_path / "photos")
    other = shutil.copytree(messy, tmp_path / "other")  # another data folder, with files of the same names
    manifest, _ = move_flagged([Finding("red/img_000.png", "outlier", "")], photos, tmp_path / "q")
    record = json.loads(Path(manifest).read_text())
    Path(manifest).write_text(json.dumps({**record, "quarantine": str(other)}))  # edited by hand
    (tmp_path / "q").rename(tmp_path / "renamed")

    assert undo_move(tmp_path / "renamed" / Path(manifest).name) == (1, 0, []) and (photos / "red" / "img_000.png").is_file()
    assert (other / "red" / "img_000.png").is_file()  # left where it was
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({**record, "root": str(tmp_path / "no-such-folder")}))
    with pytest.raises(ConfigError, match="no-such-folder is no longer there; nothing was moved back"):
        undo_move(gone)
    assert not (tmp_path / "no-such-folder").exists()


@pytest.mark.parametrize("edit", [{"moved": ["a.jpg"]}, {"moved": {"a": 1}}, {"moved": [{"p": "a.jpg"}]}, {"moved": [{"path": None}]},
                                  {"moved": [{"path": "../../etc/passwd"}]}, {"moved": [{"path": "."}]}, {"root": "relative/dir"},
                                  {"root": ""}, {"format": 99}, "[" * 100000 + "]" * 100000])
def test_a_hand_edited_manifest_is_one_config_error(tmp_path, edit):
    from petal.data.quarantine import undo_move
    from petal.errors import ConfigError

    manifest = tmp_path / "manifest.json"
    record = {"format": 1, "root": str(tmp_path / "photos"), "quarantine": str(tmp_path / "q"), "moved": [{"path": "a/x.jpg"}]}
    manifest.write_text(edit if isinstance(edit, str) else json.dumps({**record, **edit}))
    with pytest.raises(ConfigError, match="not a manifest written by petal data --move-to"):
        undo_move(manifest)


def test_a_read_only_class_folder_is_refused_before_anything_moves(messy, tmp_path, monkeypatch):
    from petal.data import quarantine
    from petal.data.doctor import Finding
    from petal.errors import PetalError

    photos = shutil.copytree(messy, tmp_path / "photos")
    real_access = os.access  # root may write anywhere: the folder's mode is what the check reads
    monkeypatch.setattr(quarantine.os, "access", lambda path, mode: Path(path).name != "red" and real_access(path, mode))
    with pytest.raises(PetalError, match="red: not writable"):
        quarantine.move_flagged([Finding("blue/img_000.png", "outlier", ""), Finding("red/img_000.png", "outlier", "")], photos, tmp_path / "q")
    assert (photos / "blue" / "img_000.png").is_file() and not (tmp_path / "q").exists()


def test_two_different_flat_images_are_not_near_copies_though_their_hashes_agree():
    from petal.training.label_issues import near_copy_pairs

    pattern = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rows = np.stack([np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 128, np.uint8), pattern, pattern[:, ::-1][:, ::-1]])

    class InMemory:
        keys = ["black", "grey", "pattern", "pattern-again"]

        def __len__(self):
            return len(rows)

        def gather(self, positions):
            return rows[positions]

    unit = np.array([[1.0, 0.0], [0.8, 0.6], [1.0, 0.0], [0.8, 0.6]])  # each pair at cosine distance 0.2
    distances, neighbours = np.full((4, 1), 0.2), np.array([[1], [0], [3], [2]])
    pairs = near_copy_pairs(InMemory(), unit, distances, neighbours)
    assert [(i, j) for i, j, _, _ in pairs] == [(2, 3)]


def test_train_exclude_leaves_the_listed_files_out_of_the_split_and_records_them_in_the_config(messy, tmp_path):
    from petal.cli.parser import build_parser
    from petal.config import TrainConfig
    from petal.training.loop import make_split

    listed = tmp_path / "exclude.txt"
    listed.write_text("blue/filed_wrong.png\nred/checkerboard.png\n")
    assert build_parser().parse_args(["train", str(messy), "--exclude", str(listed)]).exclude == str(listed)
    config = TrainConfig(str(messy), "tutorial", exclude=["red/checkerboard.png", "blue/filed_wrong.png"])
    split = make_split(config)
    assert not {"blue/filed_wrong.png", "red/checkerboard.png"} & set(split.train.paths + split.validation.paths)
    saved = json.loads(json.dumps(config.to_dict()))  # as config.json holds it in the run folder
    assert saved["exclude"] == ["blue/filed_wrong.png", "red/checkerboard.png"]
    assert TrainConfig.from_dict(saved) == config


def test_a_near_copy_across_classes_names_a_partner_in_another_class(monkeypatch):
    from types import SimpleNamespace

    from petal.training import label_issues

    # three copies: 0 and 1 in class a, 2 in class b; 0 is linked to 1 only, 1 to both
    monkeypatch.setattr(label_issues, "near_copy_pairs", lambda *args: [(0, 1, 0.01, 1), (1, 2, 0.02, 2)])
    images = SimpleNamespace(paths=["a/x0.jpg", "a/x1.jpg", "b/x2.jpg"])
    features = np.array([[1.0, 0.0], [1.0, 0.01], [1.0, 0.03]])
    findings = label_issues.near_duplicates(images, np.array([0, 0, 1]), ("a", "b"), dict.fromkeys(images.paths, "train"),
                                            features, None, None, 0.05, 3)

    partners = {f.path: f.detail.rsplit(" to ", 1)[1] for f in findings if f.kind == "near-duplicate-across-classes"}
    assert partners == {"a/x0.jpg": "b/x2.jpg", "a/x1.jpg": "b/x2.jpg", "b/x2.jpg": "a/x1.jpg"}


def test_a_folder_too_small_for_label_issues_is_refused_before_anything_is_decoded_or_embedded(tmp_path):
    from petal.errors import DataError
    from petal.training.label_issues import find_issues

    root = tmp_path / "photos"
    for c, (name, colour) in enumerate(CLASS_COLOURS.items()):
        for i in range(3):
            pattern_image(root / name / f"img_{i}.png", colour, 10 * c + i)
    with pytest.raises(DataError, match="needs at least 2 usable images in every class and 11 in all; image files per class"):
        find_issues(load_split(root, val_split=0.5), cache_dir=tmp_path / "cache", backbone=tiny_backbone())
    assert not (tmp_path / "cache").exists()


def test_a_broken_link_flagged_unreadable_is_moved_as_a_link_and_put_back(messy, tmp_path):
    from petal.data.doctor import Finding
    from petal.data.quarantine import move_flagged, undo_move

    photos = shutil.copytree(messy, tmp_path / "photos")
    (photos / "red" / "gone.jpg").symlink_to(tmp_path / "no-such-photo.jpg")
    manifest, moved = move_flagged([Finding("red/gone.jpg", "unreadable", "")], photos, tmp_path / "q", kinds=("unreadable",))
    assert moved == 1 and (tmp_path / "q" / "red" / "gone.jpg").is_symlink() and not os.path.lexists(photos / "red" / "gone.jpg")
    assert undo_move(manifest) == (1, 0, []) and (photos / "red" / "gone.jpg").is_symlink()
