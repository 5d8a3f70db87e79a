"""Every `--json` output is one JSON object that validates against its documented schema
(docs/schemas/COMMAND.schema.json), and stdout holds nothing else."""

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import CLASS_COLOURS, exported_tiny_run, make_folder, make_image

from petal.cli import main

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def run_json(capsys, command: list[str], expected_exit: int = 0) -> dict:
    assert main([*command, "--json"]) == expected_exit
    output = json.loads(capsys.readouterr().out)  # fails if anything else was printed to stdout
    schema = json.loads((SCHEMAS / f"{command[0]}.schema.json").read_text())
    jsonschema.validate(output, schema)
    assert output["schema_version"] == 1 and output["command"] == command[0]
    return output


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_tiny_run(tmp_path_factory.mktemp("json"))


def test_every_command_with_a_result_documents_its_json():
    assert {p.name.removesuffix(".schema.json") for p in SCHEMAS.glob("*.schema.json")} == {
        "data", "models", "train", "export", "evaluate", "report", "predict", "predict-batch"}


def test_models_data_and_report_print_documented_json(capsys, exported):
    assert run_json(capsys, ["models"])["default"] == "mobilenet-v2"
    assert run_json(capsys, ["data", str(exported.parent / "photos")])["files"] == 36
    assert run_json(capsys, ["report", str(exported)])["bytes"] > 0


def test_train_export_evaluate_and_predict_print_documented_json(capsys, tmp_path):
    data = make_folder(tmp_path / "photos", per_class=6)
    trained = run_json(capsys, ["train", str(data), "--model", "tutorial", "--epochs", "1", "--batch-size", "8", "--image-size", "16", "16",
                                "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert trained["epochs"] == 1 and trained["next"] == f"petal export {tmp_path / 'run'}"
    exported = run_json(capsys, ["export", trained["run"], "--quantize", "float32"])
    assert [v["variant"] for v in exported["variants"]] == ["float32"]
    evaluated = run_json(capsys, ["evaluate", trained["run"]])
    assert evaluated["images"] == trained["validation"]["images"]
    photo = make_image(tmp_path / "query.jpg", CLASS_COLOURS["red"], seed=1)
    predicted = run_json(capsys, ["predict", str(tmp_path / "run" / "export" / "model-float32.tflite"), str(photo), str(tmp_path / "missing.jpg")],
                         expected_exit=1)
    assert [p["source"] for p in predicted["predictions"]] == [str(photo)] and predicted["errors"][0]["source"].endswith("missing.jpg")
    assert predicted["calibrated"] is False and predicted["predictions"][0]["sure"]  # 18 photos: every answer sure, which says nothing


@pytest.mark.slow  # a Ray cluster of its own; predict-batch's output itself is tested in test_batch.py
def test_predict_batch_prints_documented_json(capsys, exported, tmp_path):
    tflite = exported / "export" / "model-float32.tflite"
    result = run_json(capsys, ["predict-batch", str(tflite), str(exported.parent / "photos"), "--out", str(tmp_path / "out"), "--workers", "1"])
    assert result["predicted"] == 36 and result["failed"] == 0
