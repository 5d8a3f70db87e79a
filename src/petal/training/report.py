"""report.html: one self-contained page per run folder, rebuilt from the folder's own files.

Everything the page shows is read from the run folder (config, split lists, history, diagnosis, PNGs,
export and evaluation reports); images are embedded as data URIs, so the page needs no network and no
other file, and can be mailed or archived alone. No TensorFlow is imported.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from petal import atomic
from petal.errors import counted
from petal.run_folder import RunFolder, duration
from petal.runtime.calibration import MIN_IMAGES, Calibration

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa;line-height:1.4}
main{max-width:1000px;margin:0 auto;padding:.75rem}
h1{font-size:1.4rem;overflow-wrap:anywhere}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
img{width:100%;max-width:720px;height:auto;border:1px solid #eee;background:#fff}
.scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;white-space:nowrap}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}.verdict{padding:.5rem;background:#fff3cd}
.fail{color:#b00020;font-weight:bold}.meta{color:#555;font-size:.9rem}
.answer{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.75rem}.answer p{margin:.4rem 0}
.headline{font-size:1.15rem}nav ol{margin:.25rem 0;padding-left:1.5rem}nav li{display:inline-block;margin-right:1.5rem}
table.kv td{text-align:left;white-space:normal;word-break:break-all}
code,p{overflow-wrap:anywhere}figure{margin:1rem 0}
"""


def build_report(run_dir: str | os.PathLike) -> Path:
    """Write RUN/report.html from what the run folder holds now; return its path.

    The answer first (model, data, accuracy with its interval, most confused classes, what to do next),
    then the export table, then the detail: data, training, each evaluation with its data, settings."""
    run = RunFolder(run_dir)
    run.require("config.json", "labels.txt")
    config = run.config().to_dict()
    sections = [("result", "Result", _result_section(run, config))]
    if run.export_report():
        sections.append(("export", "Export", _export_section(run.export_report())))
    sections += [("data", "Data", _data_section(run)), ("training", "Training", _training_section(run))]
    for number, (name, metrics) in enumerate(run.evaluations(), start=1):
        sections.append((f"evaluation-{number}", f"Evaluation: {name}", _evaluation_section(run / "evaluation" / name, name, metrics)))
    sections.append(("configuration", "Configuration", _config_section(config)))
    contents = "<nav><b>Contents</b><ol>" + "".join(f"<li><a href='#{key}'>{_e(title)}</a></li>" for key, title, _ in sections) + "</ol></nav>"
    body = "\n".join(f"<section id='{key}'>{text}</section>" for key, _, text in sections)
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>petal: {_e(run.path.name)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>petal run: {_e(run.path.name)}</h1>{_meta_line(run)}{contents}{body}</main></body></html>\n")
    path = run / "report.html"
    atomic.write_text(path, page)
    return path


def _meta_line(run: RunFolder) -> str:
    env, timings = run.record("environment"), run.record("timings")
    parts = []
    if env:
        parts.append(f"finished {_e(env['finished'])}")
    seconds = env.get("seconds") or sum(timings.values())  # the training run's (saving and calibration included), else its stages'
    if seconds:
        parts.append(f"took {duration(seconds)}")
    if env:
        parts.append(f"petal {_e(env['petal'])}, TensorFlow {_e(env['tensorflow'])}, Keras {_e(env['keras'])}, Python {_e(env['python'])}")
        parts.append(_e(env["device"]))
    return f"<p class=meta>{' · '.join(parts)}</p>" if parts else ""


def wilson_interval(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of the proportion right/n (Wilson, 1927): sound at small n and near 1."""
    if n == 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _result_section(run: RunFolder, config: dict) -> str:
    validation = run.record("validation")
    calibration = Calibration.from_dict(run.record("calibration") or None, str(run / "calibration.json"))
    size = "x".join(map(str, config["image_size"]))
    headline = f"Model <b>{_e(config['model'])}</b> ({size} pixels) on <code>{_e(config['data_dir'])}</code>: "
    if not validation:
        history = run.history().get("val_accuracy")
        headline += f"not finished; last validation accuracy {history[-1]:.4f}" if history else "not trained yet"
        return f"<h2>Result</h2><div class=answer><p class=headline>{headline}</p></div>"
    n, accuracy = validation["images"], validation["accuracy"]
    low, high = wilson_interval(round(accuracy * n), n)
    headline += f"validation accuracy <b>{accuracy:.4f}</b> (95% interval {low:.3f}-{high:.3f}, {n} images it never trained on)."
    lines = [f"<p class=headline>{headline}</p>"]
    if config.get("exclude"):  # the validation split is smaller than the same folder's without the list
        lines.append(f"<p>{counted(len(config['exclude']), 'file')} listed by <code>--exclude</code> (config.json's "
                     f"<code>exclude</code>) left out of the split; every other file kept its side.</p>")
    names = list(run.class_names())
    confusion = np.asarray(validation["confusion"])
    np.fill_diagonal(confusion, 0)
    order = np.argsort(-confusion, axis=None, kind="stable")[:3]
    pairs = [(int(confusion.flat[i]), names[i // len(names)], names[i % len(names)]) for i in order if confusion.flat[i] > 0]
    if pairs:
        lines.append("<p>Most confused: " + "; ".join(f"{_e(true)} taken for {_e(taken)} ({count})" for count, true, taken in pairs) + ".</p>")
    if n < MIN_IMAGES:  # petal.runtime.calibration.calibrate fits nothing to so few
        lines.append(f"<p>Not calibrated: {n} validation images, fewer than the {MIN_IMAGES} calibration needs; confidences are "
                     f"the model's own and no prediction says <i>not sure</i>.</p>")
    if calibration.threshold > 0:
        sure = calibration.accuracy_when_sure
        lines.append(f"<p>Below a calibrated confidence of {100 * calibration.threshold:.0f}% a prediction says <i>not sure</i>: "
                     f"{100 * calibration.coverage:.0f}% of the validation images are above it"
                     + (f", {100 * sure:.1f}% of those right" if sure is not None else "") + ".</p>")
    lines.append(f"<p>Next: {_next_step(run)}</p>")
    if run.record("diagnosis"):
        lines.append(f"<p class=verdict>{_e(run.record('diagnosis')['verdict'])}</p>")
    return "<h2>Result</h2><div class=answer>" + "".join(lines) + "</div>"


def _next_step(run: RunFolder) -> str:
    report = run.export_report()
    if not report:
        return f"<code>petal export {_e(str(run.path))}</code> converts it to LiteRT, each variant checked against this model."
    recommended = run.recommended_model()
    if recommended is None:
        return "no LiteRT variant passed the parity gate: see Export."
    return (f"<code>petal serve {_e(recommended)}</code> (of the variants that passed the gate, the fastest at one thread) to try it "
            f"on photos, or <code>petal evaluate {_e(str(run.path))} --data DIR</code> on photos from elsewhere.")


def _config_section(config: dict) -> str:
    rows = [(key, json.dumps(value)) for key, value in config.items()]
    return "<h2>Configuration</h2><details><summary>All settings (config.json)</summary>" + _table(["setting", "value"], rows, "kv") + "</details>"


def _data_section(run: RunFolder) -> str:
    labels = list(run.class_names())
    counts = {subset: np.bincount(folder.labels, minlength=len(labels)) for subset, folder in run.splits(decoded=True).items()}
    rows = [(name, *[int(c[i]) for c in counts.values()]) for i, name in enumerate(labels)]
    rows.append(("all", *[int(c.sum()) for c in counts.values()]))
    subsets = list(counts)
    skipped = ""
    left_out = run.skipped()
    if left_out:
        skipped = f"<p>{counted(len(left_out), 'file')} left out (could not be decoded):</p>" + _table(["file", "reason"], list(left_out.items())[:50])
    return ("<h2>Data</h2>" + _table(["class", *subsets], rows) + skipped + _copies(run)
            + _figure(run / "samples.jpg", "Training images") + _figure(run / "augmentation.jpg", "One image through the augmentation"))


def _copies(run: RunFolder) -> str:
    copies, out = run.record("copies"), ""
    for key, what in (("across_split", "files in both the training and the validation side (same contents): validation "
                                       "accuracy counts them as new photos"),
                      ("two_classes", "files with the same contents under two classes: one of the labels is wrong")):
        if copies.get(key):
            out += f"<p class=verdict>{counted(copies[key + '_count'], 'file')} {what.removeprefix('files ')}.</p>" + _table(["file", "same contents as"], copies[key][:20])
    if out:
        out += "<p><code>petal data DIR</code> names near copies too, and <code>--label-issues</code> photos filed under the wrong class.</p>"
    return out


def _training_section(run: RunFolder) -> str:
    out = "<h2>Training</h2>"
    history = run.history()
    if history:
        keys = [k for k in ("accuracy", "val_accuracy", "loss", "val_loss", "seconds") if k in history]
        rows = [(int(e), *[f"{history[k][i]:.4f}" for k in keys]) for i, e in enumerate(history["epoch"])]
        out += _figure(run / "curves.png", "Training and validation curves")
        out += "<details><summary>Every epoch</summary>" + _table(["epoch", *keys], rows) + "</details>"
    else:
        out += "<p>No finished epoch yet.</p>"
    return out


def _evaluation_section(folder: Path, name: str, metrics: dict) -> str:
    rows = [(name, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"])
            for name, m in metrics["per_class"].items()]
    summary = (f"<p>{_e(Path(metrics['model']).name)} on <code>{_e(metrics['data'])}</code>, {metrics['images']} images: accuracy <b>{metrics['accuracy']:.4f}</b>, "
               f"top-{metrics['top_k']} {metrics['top_k_accuracy']:.4f}, expected calibration error "
               f"{metrics['expected_calibration_error']:.4f}</p>")
    return (f"<h2>Evaluation: {_e(name)}</h2>" + summary + _table(["class", "precision", "recall", "F1", "support"], rows)
            + _figure(folder / "confusion.png", "Confusion matrix") + _figure(folder / "reliability.png", "Reliability diagram")
            + _figure(folder / "mistakes.jpg", "The most confident mistakes"))


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
    mime = "image/jpeg" if path.suffix == ".jpg" else "image/png"
    return f"<figure><img src='data:{mime};base64,{data}' alt='{_e(caption)}'><figcaption>{_e(caption)}</figcaption></figure>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
