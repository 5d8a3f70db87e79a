"""report.html: one self-contained page per run folder, rebuilt from the folder's own files.

Everything the page shows is read from the run folder (config, split lists, history, diagnosis, PNGs,
export and evaluation reports); images are embedded as data URIs, so the page needs no network and no
other file, and can be mailed or archived alone. No TensorFlow is imported.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import numpy as np

from petal import atomic
from petal.run_folder import RunFolder

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1000px;margin:0 auto;padding:1rem}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto;border:1px solid #eee;background:#fff}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;white-space:nowrap}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}.verdict{font-size:1.05rem;padding:.5rem;background:#fff3cd}
.fail{color:#b00020;font-weight:bold}.summary{font-size:1.05rem}
table.kv td{text-align:left;white-space:normal;word-break:break-all}
code{word-break:break-all}figure{margin:1rem 0}
"""


def build_report(run_dir: str | os.PathLike) -> Path:
    """Write RUN/report.html from what the run folder holds now; return its path."""
    run = RunFolder(run_dir)
    run.require("config.json", "labels.txt")
    config = run.config().to_dict()
    parts = [f"<h1>petal run: {_e(run.path.name)}</h1>", _summary(run, config), _data_section(run)]
    parts.append(_training_section(run))
    for name, metrics in run.evaluations():
        parts.append(_evaluation_section(run / "evaluation" / name, metrics))
    if run.export_report():
        parts.append(_export_section(run.export_report()))
    parts.append(_config_section(config))
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>petal: {_e(run.path.name)}</title><style>{STYLE}</style></head><body><main>"
            + "\n".join(parts) + "</main></body></html>\n")
    path = run / "report.html"
    atomic.write_text(path, page)
    return path


def _summary(run: RunFolder, config: dict) -> str:
    history = run.history()
    result = "not trained yet"
    if history.get("val_accuracy"):
        accuracy = history["val_accuracy"]
        mirrored = ", each image averaged with its mirror image" if config.get("test_time_flip") else ""
        result = (f"validation accuracy <b>{accuracy[-1]:.4f}</b> after {len(accuracy)} of {config['epochs']} epochs "
                  f"(best {max(accuracy):.4f}){mirrored}")
    size = "x".join(map(str, config["image_size"]))
    trained_at = config.get("train_image_size")
    if trained_at and list(trained_at) != list(config["image_size"]):
        size += f" (trained on {'x'.join(map(str, trained_at))} crops)"
    return (f"<p class=summary>Model <b>{_e(config['model'])}</b> on <code>{_e(config['data_dir'])}</code>, "
            f"{size} pixels: {result}.</p>")


def _config_section(config: dict) -> str:
    rows = [(key, json.dumps(value)) for key, value in config.items()]
    return "<h2>Configuration</h2><details><summary>All settings (config.json)</summary>" + _table(["setting", "value"], rows, "kv") + "</details>"


def _data_section(run: RunFolder) -> str:
    labels = list(run.class_names())
    counts = {subset: np.bincount(folder.labels, minlength=len(labels)) for subset, folder in run.splits().items()}
    rows = [(name, *[int(c[i]) for c in counts.values()]) for i, name in enumerate(labels)]
    rows.append(("all", *[int(c.sum()) for c in counts.values()]))
    subsets = list(counts)
    skipped = ""
    left_out = run.skipped()
    if left_out:
        skipped = f"<p>{len(left_out)} files left out (could not be decoded):</p>" + _table(["file", "reason"], list(left_out.items())[:50])
    return ("<h2>Data</h2>" + _table(["class", *subsets], rows) + skipped
            + _figure(run / "samples.png", "Training images") + _figure(run / "augmentation.png", "One image through the augmentation"))


def _training_section(run: RunFolder) -> str:
    out = "<h2>Training</h2>"
    if run.record("diagnosis"):
        out += f"<p class=verdict>{_e(run.record('diagnosis')['verdict'])}</p>"
    history = run.history()
    if history:
        keys = [k for k in ("accuracy", "val_accuracy", "loss", "val_loss", "seconds") if k in history]
        rows = [(int(e), *[f"{history[k][i]:.4f}" for k in keys]) for i, e in enumerate(history["epoch"])]
        out += _figure(run / "curves.png", "Training and validation curves")
        out += "<details><summary>Every epoch</summary>" + _table(["epoch", *keys], rows) + "</details>"
    else:
        out += "<p>No finished epoch yet.</p>"
    return out


def _evaluation_section(folder: Path, metrics: dict) -> str:
    rows = [(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
            for name, m in metrics["per_class"].items()]
    summary = (f"<p>{_e(Path(metrics['model']).name)} on {metrics['images']} images: accuracy <b>{metrics['accuracy']:.4f}</b>, "
               f"top-{metrics['top_k']} {metrics['top_k_accuracy']:.4f}, expected calibration error "
               f"{metrics['expected_calibration_error']:.4f}</p>")
    return (f"<h2>Evaluation: {_e(folder.name)}</h2>" + summary + _table(["class", "precision", "recall", "F1", "support"], rows)
            + _figure(folder / "confusion.png", "Confusion matrix") + _figure(folder / "reliability.png", "Reliability diagram")
            + _figure(folder / "mistakes.png", "The most confident mistakes"))


def _export_section(report: dict) -> str:
    threads = sorted({int(t) for v in report["variants"] for t in v["speed"]["latency_ms"]})
    head = ["variant", "size MB", "accuracy", "Δ acc (points)", "top-1 agreement", "max |Δlogit|"]
    head += [f"ms/img {t} thr" for t in threads] + ["gate"]
    rows = [("Keras", f"{report['keras_file_bytes'] / 1e6:.2f}", f"{report['keras_accuracy']:.4f}", *[""] * (len(head) - 3))]
    for v in report["variants"]:
        gate = "pass" if v["passed"] else f"<span class=fail>FAIL: {_e(v['failure'])}</span>"
        rows.append((v["variant"], f"{v['file_bytes'] / 1e6:.2f}", f"{v['accuracy']:.4f}", f"{0.0 - 100 * v['accuracy_drop']:+.2f}",
                     f"{100 * v['top1_agreement']:.2f}%", f"{v['max_abs_logit_diff']:.1e}",
                     *[f"{v['speed']['latency_ms'][str(t)]:.2f}" for t in threads], _Raw(gate)))
    return f"<h2>Export (LiteRT, {report['images']} validation images)</h2>" + _table(head, rows)


class _Raw(str):
    """Table cell text that is already HTML."""


def _table(head, rows, css_class: str = "") -> str:
    cell = lambda v: v if isinstance(v, _Raw) else _e(str(v))  # noqa: E731
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table class='{css_class}'><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + f"</tr>{body}</table></div>"


def _figure(path: Path, caption: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<figure><img src='data:image/png;base64,{data}' alt='{_e(caption)}'><figcaption>{_e(caption)}</figcaption></figure>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
