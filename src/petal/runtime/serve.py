"""`petal serve`: a local page to try a model on your own photos, and `POST /predict` for programs.

Runs on the light runtime: a `.tflite` is served by LiteRT without TensorFlow (a run folder works
too, through Keras). Uploads go through `petal.data.decode.decode_image`, the function training used.

What one request may cost is bounded, so one odd upload cannot starve the others:
- bytes: the body is counted while it streams in and refused (413) past the limit, chunked or not;
- memory: at most `decodes` images are decoded at once, in worker threads, each within the model's
  pixel limit (about 9 bytes per pixel at worst, `petal.data.decode.open_rgb`); a larger image gets 413;
- time: a request not decoded and classified within `timeout_s` of its upload arriving gets 503.
One interpreter serves every request, one call at a time (LiteRT interpreters are not thread-safe),
while other requests decode. Every error is JSON, `{"error": message}`; docs/SERVE.md describes the
API and the app serves its OpenAPI schema at /openapi.json.
"""

from __future__ import annotations

import html
import os
import socket

import anyio
import anyio.to_thread
from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from petal.data.decode import decode_image
from petal.errors import ConfigError, ImageError
from petal.runtime.predict import PredictionError, Predictor

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_DECODES = 2  # images decoded at once: each may hold ~9 bytes x the model's pixel limit while decoding
DEFAULT_TIMEOUT_S = 10.0  # from the upload's arrival to its answer, decode and model call included, before a 503
MULTIPART_OVERHEAD = 64 * 1024  # part headers and boundaries allowed on top of the file itself


class UploadTooLarge(Exception):
    """The request body grew past the upload limit while it was being read."""


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port) (port 0: any free one), for uvicorn.Server.run(sockets=...): made before
    the server starts, so a port in use or an unknown host is one line, not uvicorn's log after "Serving".

    Raises:
        ConfigError: the address cannot be listened on.
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:  # gaierror included
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def create_app(
    model_path: str | os.PathLike,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    top_k: int = 3,
    *,
    decodes: int = DEFAULT_DECODES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_pixels: int | None = None,
) -> Starlette:
    """The app `petal serve` runs: GET / (the page), POST /predict, GET /openapi.json (docs/SERVE.md).

    `max_pixels` defaults to the model's own limit (the one training used)."""
    if not max_upload_bytes >= 1 or top_k < 1 or decodes < 1 or not timeout_s > 0 or (max_pixels is not None and max_pixels < 1):
        raise ConfigError(
            "the upload limit, timeout and pixel limit must be positive, top_k and decodes at least 1. "
            f"Received: {max_upload_bytes=}, {top_k=}, {decodes=}, {timeout_s=}, {max_pixels=}"
        )
    predictor = Predictor.load(model_path)
    pixel_limit = max_pixels or predictor.max_pixels
    decode_slots = anyio.CapacityLimiter(decodes)
    model_slot = anyio.CapacityLimiter(1)  # one interpreter, one call at a time
    limit_text = f"{max_upload_bytes / 1024 / 1024:.0f} MB"
    k = min(top_k, len(predictor.class_names))

    def decode(data: bytes):
        return decode_image(data, predictor.image_size, max_pixels=pixel_limit)

    def infer(image):  # already decoded at the model's size: Predictor's own decode of it is a copy
        return next(iter(predictor.predict([Image.fromarray(image)], top_k=k)))

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(PAGE.replace("{{title}}", html.escape(predictor.description))
                            .replace("{{labels}}", "".join(f"<li>{html.escape(name)}</li>" for name in predictor.class_names))
                            .replace("{{limit}}", limit_text))

    async def predict(request: Request) -> JSONResponse:
        too_large = _error(413, f"upload is larger than the limit of {limit_text}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_upload_bytes + MULTIPART_OVERHEAD:
            return too_large
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return _error(400, "send the photo as a multipart/form-data file field named 'image'")
        try:
            form = await MultiPartParser(request.headers, _limited(request.stream(), max_upload_bytes + MULTIPART_OVERHEAD),
                                         max_files=1, max_fields=8, max_part_size=64 * 1024).parse()
        except UploadTooLarge:
            return too_large
        except MultiPartException as exc:
            return _error(413 if "maximum size" in exc.message else 400, f"bad upload: {exc.message}")
        except ClientDisconnect:
            return _error(400, "the client closed the connection during the upload")
        try:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                return _error(400, "send the photo as a multipart/form-data file field named 'image'")
            if upload.size is not None and upload.size > max_upload_bytes:
                return too_large
            data = await upload.read()
        finally:
            await form.close()
        try:
            with anyio.fail_after(timeout_s):  # cuts waits for a slot short; a decode or model call that started ends first
                image = await anyio.to_thread.run_sync(decode, data, limiter=decode_slots)
                del data
                result = await anyio.to_thread.run_sync(infer, image, limiter=model_slot)
        except TimeoutError:
            return _error(503, f"the server is busy: this request was not decoded and classified within {timeout_s:g} s; try again",
                          headers={"Retry-After": "1"})
        except ImageError as exc:
            return _error(413 if exc.kind == "too-large" else 415, f"{upload.filename or 'upload'}: {exc.reason}")
        if isinstance(result, PredictionError):  # the model's fault, not the photo's
            return _error(500, result.reason)
        return JSONResponse({
            "label": result.label,
            "confidence": result.confidence,
            "top": [{"label": name, "probability": p} for name, p in result.top],
            "tied": list(result.tied),
            "sure": result.sure,
            "calibrated": predictor.calibration.calibrated,
            "threshold": predictor.calibration.threshold,
            "model": predictor.description,
        })

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(openapi_schema(predictor.class_names, max_upload_bytes))

    return Starlette(
        routes=[Route("/", page), Route("/predict", predict, methods=["POST"]), Route("/openapi.json", openapi)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _limited(stream, limit: int):
    """`stream`'s chunks, raising UploadTooLarge as soon as more than `limit` bytes have arrived."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > limit:
            raise UploadTooLarge
        yield chunk


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (404, 405, ...) as JSON too."""
    message = f"{exc.detail}: {request.method} {request.url.path}; the API is POST /predict (GET /openapi.json describes it)"
    return _error(exc.status_code, message, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: JSON for the client; Starlette then re-raises, so the server logs the traceback."""
    return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def openapi_schema(class_names, max_upload_bytes: int) -> dict:
    """The OpenAPI 3.1 description of POST /predict that GET /openapi.json returns (docs/SERVE.md)."""
    error = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    errors = {
        "400": "not a multipart/form-data upload with a file field named 'image', or malformed multipart",
        "413": f"the upload is over {max_upload_bytes} bytes, or the image has more pixels than the model's limit",
        "415": "the file is not an image petal can decode (the message names the file and why)",
        "503": "the server is busy: no decode slot or model call within the time budget; retry (Retry-After)",
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "petal serve", "version": "1", "description": "Classify one photo with a petal model."},
        "paths": {"/predict": {"post": {
            "summary": "Classify one photo",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary",
                                         "description": "JPEG, PNG, GIF, BMP, WebP or TIFF"}}}}}},
            "responses": {
                "200": {"description": "the most likely classes", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Prediction"}}}},
                **{status: {**error, "description": text} for status, text in errors.items()},
            },
        }}},
        "components": {"schemas": {
            "Prediction": {"type": "object", "required": ["label", "confidence", "top", "tied", "sure", "calibrated", "threshold", "model"], "properties": {
                "label": {"type": "string", "enum": list(class_names)},
                "confidence": {"type": "number", "description": "calibrated probability of label, 0..1"},
                "sure": {"type": "boolean", "description": "confidence reaches the model's calibrated threshold; false: show it as not sure"},
                "calibrated": {"type": "boolean", "description": "false: the model was not calibrated (too few validation images), "
                                                                 "its confidences are raw and every answer is sure"},
                "threshold": {"type": "number", "description": "the calibrated confidence below which the model is not sure"},
                "top": {"type": "array", "description": "most likely first; ties in label order", "items": {
                    "type": "object", "properties": {"label": {"type": "string"}, "probability": {"type": "number"}}}},
                "tied": {"type": "array", "items": {"type": "string"},
                         "description": "every class whose probability equals confidence (more than one: a tie)"},
                "model": {"type": "string", "description": "which model answered"},
            }},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        }},
    }


PAGE = """<!doctype html><html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1"><title>petal</title>
<style>
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:640px;margin:0 auto;padding:1rem;display:flex;flex-direction:column;gap:1rem}
h1{margin:0}p{margin:0;overflow-wrap:anywhere}
#classes{list-style:none;margin:.4rem 0 0;padding:0;display:flex;flex-wrap:wrap;gap:.3rem}
#classes li{background:#e8efe9;border-radius:1rem;padding:.1rem .6rem;overflow-wrap:anywhere;max-width:100%}
#drop{display:block;width:100%;border:2px dashed #999;border-radius:8px;padding:2rem 1rem;text-align:center;background:#fff;cursor:pointer}
#drop.over{border-color:#2a7;background:#efe}
#preview{display:none;max-width:100%;max-height:320px;margin:0 auto;object-fit:contain}
.row{margin:.4rem 0}.bar{height:1.1rem;background:#2a7;border-radius:3px}.unsure .bar{background:#c90}
.name{display:flex;justify-content:space-between;gap:1rem;overflow-wrap:anywhere}#error{color:#b00020}
#error:empty,#result:empty{display:none}
</style></head><body><main>
<h1>petal</h1>
<section id=about><p>{{title}}</p><p>Classes:</p><ul id=classes>{{labels}}</ul></section>
<label id=drop for=file>Drop a photo here, or tap to pick one (up to {{limit}})</label>
<input id=file type=file accept="image/*" hidden>
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
  error.textContent = ''; result.textContent = 'Classifying...'; result.className = '';
  preview.onerror = () => { preview.style.display = 'none'; };  // not an image the browser can show
  preview.src = URL.createObjectURL(file); preview.style.display = 'block';
  const body = new FormData(); body.append('image', file);
  try {
    const response = await fetch('predict', {method: 'POST', body});
    const answer = await response.json();
    if (!response.ok) { result.textContent = ''; preview.style.display = 'none'; error.textContent = answer.error; return; }
    result.innerHTML = '';
    const headline = document.createElement('p'); headline.id = 'headline';
    const top2 = answer.top.slice(0, 2).map(t => `${t.label} ${(100 * t.probability).toFixed(0)}%`).join(', ');
    result.className = answer.sure ? '' : 'unsure';
    headline.textContent = !answer.sure ? `Not sure: ${top2}.`
      : answer.tied.length > 1
      ? `A tie between ${answer.tied.join(', ')} at ${(100 * answer.confidence).toFixed(2)} percent each; reported as ${answer.label}.`
      : `Most likely ${answer.label}, ${(100 * answer.confidence).toFixed(2)} percent confidence.`;
    result.appendChild(headline);
    for (const t of answer.top) {
      const row = document.createElement('div'); row.className = 'row';
      const name = document.createElement('div'); name.className = 'name';
      name.innerHTML = '<span></span><span></span>';
      name.children[0].textContent = t.label; name.children[1].textContent = (100 * t.probability).toFixed(1) + '%';
      const bar = document.createElement('div'); bar.className = 'bar'; bar.style.width = (100 * t.probability) + '%';
      row.append(name, bar); result.appendChild(row);
    }
  } catch (e) { result.textContent = ''; preview.style.display = 'none'; error.textContent = 'The server did not answer: ' + e; }
}
</script></main></body></html>
"""
