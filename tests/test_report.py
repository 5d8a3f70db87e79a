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
    for heading in ("Data", "Training", "Evaluation: keras", "Export (LiteRT", "Configuration"):
        assert f"<h2>{heading}" in page
    assert page.count("<img src='data:image/png;base64,") == _figures(finished_run)
    assert "http://" not in page and "https://" not in page


def _figures(run: Path) -> int:
    """samples, augmentation, curves, confusion, reliability, and the mistakes gallery if there were mistakes."""
    return 5 + (run / "evaluation" / "keras" / "mistakes.png").exists()


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
            page.screenshot(path=str(tmp_path / f"report-{name}.png"), full_page=True)
        browser.close()
    assert outside == []
    assert Path(tmp_path / "report-phone.png").stat().st_size > 10_000
