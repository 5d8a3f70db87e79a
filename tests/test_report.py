"""report.html: one self-contained page of a run, checked in a real browser."""

import shutil
from pathlib import Path

import pytest
from conftest import make_folder

from petal.config import ExportConfig, TrainConfig
from petal.training.evaluation import evaluate, write_evaluation
from petal.training.export import export_litert
from petal.training.loop import train

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run trained, exported and evaluated: every section of the report has something to show."""
    root = tmp_path_factory.mktemp("report")
    data = make_folder(root / "photos", per_class=12)
    config = TrainConfig(str(data), model="tutorial-augmented", epochs=2, batch_size=8, image_size=(32, 32),
                         augmentation="tutorial", cache_dir=str(root / "cache"))
    run = train(config, root / "run", verbose=0).run.path
    export_litert(run, ExportConfig(variants=("float32", "int8")))
    write_evaluation(evaluate(run), run / "evaluation" / "keras", data)  # rebuilds report.html
    return run


def test_training_writes_a_report_and_it_shows_every_part_of_the_run(finished_run):
    page = (finished_run / "report.html").read_text()
    headings = ["Result", "Export (LiteRT", "Data", "Training", "Evaluation: keras", "Configuration"]
    positions = [page.index(f"<h2>{heading}") for heading in headings]
    assert positions == sorted(positions)  # the answer first, the export table next, the detail after
    assert page.count("<img src='data:image/png;base64,") + page.count("<img src='data:image/jpeg;base64,") == _figures(finished_run)
    assert page.count("data:image/jpeg") == 2 + (finished_run / "evaluation" / "keras" / "mistakes.jpg").exists()  # photo grids
    assert "http://" not in page and "https://" not in page


def test_the_report_opens_with_the_answer_and_how_it_was_made(finished_run):
    page = (finished_run / "report.html").read_text()
    result = page[page.index("<h2>Result"):page.index("<h2>Export")]
    assert "validation accuracy <b>" in result and "95% interval" in result and "Next: <code>petal serve" in result
    for made_with in ("finished 2", "took ", "TensorFlow 2.", "Keras 3.", "Python 3."):
        assert made_with in page[:page.index("<h2>Result")]
    assert "Contents" in page and "href='#evaluation-1'" in page
    assert f"on <code>{finished_run.parent / 'photos'}</code>" in page  # each evaluation names its data


def test_the_wilson_interval_is_the_published_one():
    from petal.training.report import wilson_interval

    low, high = wilson_interval(81, 100)  # Wilson (1927); Newcombe (1998), table I: 0.7222-0.8749 for 81/100
    assert (round(low, 4), round(high, 4)) == (0.7222, 0.8749)


def _figures(run: Path) -> int:
    """samples, augmentation, curves, confusion, reliability, and the mistakes gallery if there were mistakes."""
    return 5 + (run / "evaluation" / "keras" / "mistakes.jpg").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_report_loads_every_image_and_nothing_from_the_network_in_headless_chromium(finished_run, tmp_path):
    from playwright.sync_api import sync_playwright

    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name, viewport in (("laptop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
            page = browser.new_page(viewport=viewport)
            page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(("file:", "data:")) else None)
            page.goto((finished_run / "report.html").as_uri())
            page.wait_for_load_state("load")
            sizes = page.eval_on_selector_all("img", "images => images.map(i => [i.complete, i.naturalWidth])")
            assert len(sizes) == _figures(finished_run) and all(complete and width > 0 for complete, width in sizes)
            # readable: nothing wider than the screen (tables scroll inside their own box), the answer on the first screen
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            for image in page.locator("img").all():
                box = image.bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"] + 0.5
            assert page.locator("#result").bounding_box()["y"] < viewport["height"]
            page.screenshot(path=str(tmp_path / f"report-{name}.png"), full_page=True)
        browser.close()
    assert outside == []
    assert Path(tmp_path / "report-phone.png").stat().st_size > 10_000


def test_a_photo_filed_under_two_classes_and_files_left_out_by_exclude_reach_the_report(tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    shutil.copy(next((data / "red").iterdir()), data / "green" / "also_red.jpg")
    config = TrainConfig(str(data), model="tutorial", epochs=1, batch_size=8, image_size=(16, 16), cache_dir=str(tmp_path / "cache"),
                         exclude=["blue/img_000.jpg", "red/img_002.jpg"])
    run = train(config, tmp_path / "run", verbose=0).run
    copies = run.record("copies")
    assert copies["two_classes_count"] == 1 and "green/also_red.jpg" in copies["two_classes"][0]
    page = (run / "report.html").read_text()
    assert "1 file with the same contents under two classes" in page
    result = page[page.index("<h2>Result"):page.index("<h2>Data")]
    assert "2 files listed by <code>--exclude</code>" in result
    assert "Not calibrated: " in result and "fewer than the 25 calibration needs" in result  # as petal train said


def test_figure_titles_keep_their_line_breaks_and_escape_control_characters():
    from petal.training.plots import drawable

    assert drawable("roses -> tulips\nphoto.jpg  0.18") == "roses -> tulips\nphoto.jpg  0.18"  # a contact sheet's title
    assert drawable("red\x1b[31m") == "red\\x1b[31m"


def test_two_line_titles_of_a_photo_grid_stay_clear_of_the_row_above():
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from petal.training.plots import image_grid

    photos = [np.full((224, 224, 3), 128, np.uint8)] * 12  # a contact sheet's: the decode cache's squares
    fig = image_grid(photos, [f"{i}. tulips -> roses\n10386522775_4f8c616999_m.jpg  0.17" for i in range(12)], columns=6)
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(90)  # as plots._save writes it: a layout made at another resolution misplaces the titles
    renderer = canvas.get_renderer()
    fig.draw(renderer)
    upper, lower = fig.axes[0], fig.axes[6]  # the first photo of rows 1 and 2
    assert lower.title.get_window_extent(renderer).y1 <= upper.images[0].get_window_extent(renderer).y0


def test_files_training_could_not_decode_count_nowhere_as_training_photos(tmp_path):
    import re

    data = make_folder(tmp_path / "photos", per_class=8)
    for name in ("blue", "green", "red"):
        (data / name / "broken.jpg").write_bytes(b"not a photo")
    config = TrainConfig(str(data), model="tutorial", epochs=1, batch_size=8, image_size=(16, 16), cache_dir=str(tmp_path / "cache"))
    run = train(config, tmp_path / "run", verbose=0).run
    skipped = run.skipped()
    train_paths = run.split("train").paths
    assert len(skipped) == 3 and set(skipped) & set(train_paths)
    used = len([p for p in train_paths if p not in skipped])

    page = (run / "report.html").read_text()
    data_section = page[page.index("<h2>Data"):page.index("<h2>Training")]
    assert re.search(rf"<td>all</td><td>{used}</td>", data_section), data_section[:600]
    export_litert(run.path, ExportConfig(variants=("int8",)))
    calibrated = {line.split(",")[0] for line in (run / "export" / "calibration.csv").read_text().splitlines()[1:]}
    assert len(calibrated) == used and not calibrated & set(skipped)
    assert evaluate(run.path, data).training_photos == used
