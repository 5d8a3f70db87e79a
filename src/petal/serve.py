"""`petal serve`: a local page to try a model on your own photos, and `POST /predict` for programs.

Runs on the light runtime: a `.tflite` is served by LiteRT without TensorFlow (a run folder works
too, through Keras). Uploads go through `petal.image.decode_image`, the function training used.
One interpreter serves every request, one at a time (LiteRT interpreters are not thread-safe);
decoding and inference run in Starlette's thread pool, so the event loop keeps accepting requests.
"""

from __future__ import annotations

import html
import os
import threading

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from petal.predict import PredictionError, Predictor

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024


def create_app(model_path: str | os.PathLike, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, top_k: int = 3) -> Starlette:
    predictor = Predictor.load(model_path)
    lock = threading.Lock()
    limit_text = f"{max_upload_bytes / 1024 / 1024:.0f} MB"

    def predict_bytes(data: bytes):
        with lock:
            return next(iter(predictor.predict([data], top_k=min(top_k, len(predictor.class_names)))))

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("{{title}}", html.escape(predictor.description))
                            .replace("{{labels}}", html.escape(", ".join(predictor.class_names)))
                            .replace("{{limit}}", limit_text))

    async def predict(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + 64 * 1024:
            return _error(413, f"upload is larger than the limit of {limit_text}")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=max_upload_bytes)
        except MultiPartException as exc:
            return _error(413 if "maximum size" in str(exc) else 400, f"bad upload: {exc}")
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            return _error(400, "send the photo as a multipart/form-data file field named 'image'")
        data = await upload.read()
        if len(data) > max_upload_bytes:
            return _error(413, f"upload is larger than the limit of {limit_text}")
        result = await run_in_threadpool(predict_bytes, data)
        if isinstance(result, PredictionError):
            return _error(415, f"{upload.filename or 'upload'}: {result.reason}")
        return JSONResponse({
            "label": result.label,
            "confidence": result.confidence,
            "top": [{"label": name, "probability": p} for name, p in result.top],
            "model": predictor.description,
        })

    return Starlette(routes=[Route("/", page), Route("/predict", predict, methods=["POST"])])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1"><title>petal</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:640px;margin:0 auto;padding:1rem}
#drop{border:2px dashed #999;border-radius:8px;padding:2rem 1rem;text-align:center;background:#fff;cursor:pointer}
#drop.over{border-color:#2a7;background:#efe}
#preview{max-width:100%;max-height:320px;display:none;margin:1rem auto}
.row{margin:.4rem 0}.bar{height:1.1rem;background:#2a7;border-radius:3px}
.name{display:flex;justify-content:space-between}#error{color:#b00020}
</style></head><body><main>
<h1>petal</h1>
<p>{{title}}<br>Classes: {{labels}}</p>
<label id=drop>Drop a photo here, or tap to pick one (up to {{limit}})
<input id=file type=file accept="image/*" hidden></label>
<img id=preview alt="your photo">
<div id=error role=alert></div>
<div id=result aria-live=polite></div>
<script>
const drop = document.getElementById('drop'), input = document.getElementById('file');
const result = document.getElementById('result'), error = document.getElementById('error');
const preview = document.getElementById('preview');
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => { e.preventDefault(); drop.classList.remove('over'); send(e.dataTransfer.files[0]); });
input.addEventListener('change', () => send(input.files[0]));
async function send(file) {
  if (!file) return;
  error.textContent = ''; result.textContent = 'Classifying...';
  preview.src = URL.createObjectURL(file); preview.style.display = 'block';
  const body = new FormData(); body.append('image', file);
  try {
    const response = await fetch('predict', {method: 'POST', body});
    const answer = await response.json();
    if (!response.ok) { result.textContent = ''; error.textContent = answer.error; return; }
    result.innerHTML = '';
    const headline = document.createElement('p'); headline.id = 'headline';
    headline.textContent = `Most likely ${answer.label}, ${(100 * answer.confidence).toFixed(2)} percent confidence.`;
    result.appendChild(headline);
    for (const t of answer.top) {
      const row = document.createElement('div'); row.className = 'row';
      const name = document.createElement('div'); name.className = 'name';
      name.innerHTML = '<span></span><span></span>';
      name.children[0].textContent = t.label; name.children[1].textContent = (100 * t.probability).toFixed(1) + '%';
      const bar = document.createElement('div'); bar.className = 'bar'; bar.style.width = (100 * t.probability) + '%';
      row.append(name, bar); result.appendChild(row);
    }
  } catch (e) { result.textContent = ''; error.textContent = 'The server did not answer: ' + e; }
}
</script></main></body></html>
"""
