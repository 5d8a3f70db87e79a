"""`petal serve`: the page and POST /predict, on the light runtime."""

import contextlib
import io
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CLASS_COLOURS, PETAL, exported_tiny_run, make_image
from starlette.testclient import TestClient

from petal.runtime.serve import create_app

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    return exported_tiny_run(tmp_path_factory.mktemp("serve")) / "export" / "model-float32.tflite"


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_image(tmp_path_factory.mktemp("photo") / "red.jpg", CLASS_COLOURS["red"], seed=5)


def test_predict_answers_with_the_top_three_classes(tflite, photo):
    client = TestClient(create_app(tflite))
    response = client.post("/predict", files={"image": ("red.jpg", photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["label"] == "red" and answer["top"][0]["label"] == "red"
    assert [t["probability"] for t in answer["top"]] == sorted((t["probability"] for t in answer["top"]), reverse=True)
    assert len(answer["top"]) == 3


def test_the_page_offers_a_file_picker_and_names_the_classes(tflite):
    page = TestClient(create_app(tflite)).get("/")
    assert page.status_code == 200
    assert 'type=file accept="image/*"' in page.text and "<li>blue</li><li>green</li><li>red</li>" in page.text


@pytest.mark.parametrize("upload, status, message", [
    ({"image": ("notes.jpg", b"this is text, not a photo", "image/jpeg")}, 415, "notes.jpg: not an image"),
    ({"photo": ("red.jpg", b"\xff\xd8", "image/jpeg")}, 400, "file field named 'image'"),
    ({"image": ("big.png", b"\0" * 5000, "image/png")}, 413, "larger than the limit"),
])
def test_bad_uploads_get_a_4xx_with_a_clear_message(tflite, upload, status, message):
    client = TestClient(create_app(tflite, max_upload_bytes=4000))
    response = client.post("/predict", files=upload)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_a_chunked_upload_over_the_limit_is_refused_while_it_streams_in(tflite):
    """Driven at the ASGI level, as uvicorn drives it (TestClient would read the whole body first): a 64 MB upload in
    256 KB chunks with no Content-Length, so the server cannot know its size up front."""
    import anyio

    boundary = uuid.uuid4().hex
    chunks = [(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="huge.jpg"\r\n'
               "Content-Type: image/jpeg\r\n\r\n").encode(), *[b"\0" * (256 * 1024)] * 256, f"\r\n--{boundary}--\r\n".encode()]
    chunks_read, sent = 0, []

    async def receive():
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": chunks[chunks_read - 1], "more_body": chunks_read < len(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", f"multipart/form-data; boundary={boundary}".encode()), (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    anyio.run(create_app(tflite, max_upload_bytes=1024 * 1024), scope, receive, send)

    assert sent[0]["status"] == 413 and "larger than the limit of 1 MB" in json.loads(sent[1]["body"])["error"]
    assert chunks_read <= 6, f"the server read {chunks_read} chunks: on past the limit (1 MB and 64 KB for multipart headers)"


@pytest.fixture
def slow_decode(monkeypatch):
    """Bytes whose decode blocks until `release` is set, as a 9400 x 9400 image's takes seconds; `started` is set once
    their decode has begun."""
    import petal.data.decode

    slow = make_image_bytes((60, 60, 60))
    started, release = threading.Event(), threading.Event()
    real_open_rgb = petal.data.decode.open_rgb

    def open_rgb(source, **kwargs):
        if source == slow:
            started.set()
            release.wait(timeout=30)
        return real_open_rgb(source, **kwargs)

    monkeypatch.setattr(petal.data.decode, "open_rgb", open_rgb)
    yield slow, started, release
    release.set()


def make_image_bytes(colour) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_slow_decode_does_not_hold_up_other_requests(tflite, photo, slow_decode):
    slow, started, release = slow_decode
    with TestClient(create_app(tflite)) as client, ThreadPoolExecutor(max_workers=1) as pool:
        slow_answer = pool.submit(client.post, "/predict", files={"image": ("big.png", slow, "image/png")})
        assert started.wait(timeout=30)
        quick = client.post("/predict", files={"image": ("red.jpg", photo.read_bytes(), "image/jpeg")})
        slow_still_decoding = not slow_answer.done()
        release.set()
        assert quick.status_code == 200 and quick.json()["label"] == "red"
        assert quick.json()["calibrated"] is False  # 36 photos: too few validation images to calibrate on
        assert slow_still_decoding, "the photo was answered only after the slow image's decode ended"
        assert slow_answer.result().status_code == 200


def test_a_request_past_its_time_budget_gets_503_and_the_server_keeps_answering(tflite, photo, slow_decode):
    slow, started, release = slow_decode
    with TestClient(create_app(tflite, decodes=1, timeout_s=0.5)) as client, ThreadPoolExecutor(max_workers=1) as pool:
        slow_answer = pool.submit(client.post, "/predict", files={"image": ("big.png", slow, "image/png")})
        assert started.wait(timeout=30)
        waiting = client.post("/predict", files={"image": ("red.jpg", photo.read_bytes(), "image/jpeg")})
        release.set()
        assert waiting.status_code == 503 and "busy" in waiting.json()["error"] and waiting.headers["retry-after"] == "1"
        assert slow_answer.result().status_code == 503  # over its budget too, once its decode ended
        assert client.post("/predict", files={"image": ("red.jpg", photo.read_bytes(), "image/jpeg")}).json()["label"] == "red"


def test_an_image_over_the_pixel_budget_gets_413(tflite, photo):
    client = TestClient(create_app(tflite, max_pixels=1000))
    response = client.post("/predict", files={"image": ("red.jpg", photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 413
    assert response.json()["error"] == "red.jpg: 40x52 = 2,080 pixels exceeds the limit of 1,000 (raise it with --max-pixels)"


@pytest.mark.parametrize("method, path, request_args, status, message", [
    ("post", "/predict", {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}, 400, "Missing boundary"),
    ("post", "/predict", {"files": [("image", ("a.jpg", b"1")), ("image", ("b.jpg", b"2"))]}, 400, "Too many files"),
    ("post", "/predict", {"content": b"--x\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--x--\r\n",
                          "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 400, '"name" must be provided'),
    ("get", "/predict", {}, 405, "Method Not Allowed"),
    ("get", "/no-such-page", {}, 404, "Not Found"),
])
def test_every_error_is_json_with_a_message(tflite, method, path, request_args, status, message):
    response = getattr(TestClient(create_app(tflite)), method)(path, **request_args)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert message in response.json()["error"]


def test_an_internal_error_is_json_too(tflite, photo, monkeypatch):
    from petal.runtime.predict import Predictor

    def broken(self, images, **kwargs):
        raise RuntimeError("the interpreter fell over")

    app = create_app(tflite)
    monkeypatch.setattr(Predictor, "predict", broken)
    response = TestClient(app, raise_server_exceptions=False).post(
        "/predict", files={"image": ("red.jpg", photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError); the server log has the details"}


def test_the_app_serves_its_openapi_schema_with_every_status_it_answers(tflite):
    schema = TestClient(create_app(tflite)).get("/openapi.json").json()
    post = schema["paths"]["/predict"]["post"]
    assert set(post["responses"]) == {"200", "400", "413", "415", "503"}
    assert post["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == ["image"]
    assert schema["components"]["schemas"]["Prediction"]["properties"]["label"]["enum"] == ["blue", "green", "red"]


@pytest.fixture(scope="module")
def server(tflite):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([PETAL, "serve", str(tflite), "--port", str(port),
                                "--max-upload-mb", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=10)


def _post(url: str, data: bytes, filename: str = "photo.jpg") -> dict:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
               "Content-Type: image/jpeg\r\n\r\n".encode())
    body.write(data)
    body.write(f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(url + "predict", data=body.getvalue(), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_the_server_survives_a_burst_of_concurrent_requests(server, photo):
    data = photo.read_bytes()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: _post(server, data), range(32)))
    assert {a["label"] for a in answers} == {"red"}
    assert len({round(a["confidence"], 6) for a in answers}) == 1


def test_the_live_server_answers_bad_uploads_with_4xx_and_keeps_serving(server, photo):
    import http.client
    from urllib.parse import urlparse

    port = urlparse(server).port

    def status_of(body: bytes, content_type: str | None) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/predict", body, {"Content-Type": content_type} if content_type else {})
        response = connection.getresponse()
        answer = (response.status, json.loads(response.read())["error"])
        connection.close()
        return answer

    def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n\r\n'.encode()
                + data + f"\r\n--{boundary}--\r\n".encode())
        return body, f"multipart/form-data; boundary={boundary}"

    status, message = status_of(*multipart(b"a shopping list, not a photo", "list.txt"))
    assert status == 415 and message.startswith("list.txt: not an image")
    status, message = status_of(b"", None)
    assert status == 400 and "field named 'image'" in message
    status, message = status_of(*multipart(b"\0" * (1536 * 1024), "huge.jpg"))
    assert status == 413 and "larger than the limit of 1 MB" in message
    assert _post(server, photo.read_bytes())["label"] == "red"


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_person_picks_a_photo_and_sees_the_top_three(server, photo, tmp_path):
    with phone_page(server, photo) as page:
        page.wait_for_selector("#headline", timeout=30_000)
        assert page.inner_text("#headline").startswith("Most likely red, ")
        assert page.locator(".bar").count() == 3
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)


@contextlib.contextmanager
def phone_page(server: str, upload: Path):
    """The page in headless Chromium at 390 px, `upload` picked."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(server)
        page.set_input_files("#file", str(upload))
        yield page
        browser.close()


def _boxes_overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_page_holds_its_layout_from_a_small_phone_to_a_wide_desktop(server, photo):
    """Geometry, not text: at each width every part is on screen, none covers another, every class is shown."""
    from playwright.sync_api import sync_playwright

    parts = ("h1", "#about", "#drop", "#preview", "#result")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for width in (320, 390, 1280, 1920):
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(server)
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#headline", timeout=30_000)
            page.wait_for_function("document.getElementById('preview').complete")
            boxes = {part: page.locator(part).bounding_box() for part in parts}
            for part, box in boxes.items():
                assert box and box["width"] > 0 and box["height"] > 0, f"{part} is not shown at {width} px"
                assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, f"{part} leaves the screen at {width} px: {box}"
            for i, a in enumerate(parts):
                for b in parts[i + 1:]:
                    assert not _boxes_overlap(boxes[a], boxes[b]), f"{a} and {b} overlap at {width} px"
            about = boxes["#about"]
            for chip in page.locator("#classes li").all():
                box = chip.bounding_box()
                assert box["x"] >= about["x"] - 0.5 and box["x"] + box["width"] <= about["x"] + about["width"] + 0.5
                assert box["y"] + box["height"] <= about["y"] + about["height"] + 0.5
            assert page.locator("#classes li").count() == 3 and page.locator("#drop").is_visible()
            page.close()
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_file_that_is_not_an_image_gets_its_error_and_no_broken_preview(server, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("a shopping list, not a photo")
    with phone_page(server, notes) as page:
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert page.inner_text("#error").startswith("notes.jpg: not an image")
        assert not page.locator("#preview").is_visible()


@pytest.mark.parametrize("options", [["--max-upload-mb", "inf"], ["--max-upload-mb", "1e308"], ["--host", "256.1.1.1"], "port in use"])
def test_an_address_or_limit_the_server_cannot_take_is_one_line_before_serving(tflite, options):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        if options == "port in use":
            options = ["--port", str(port)]
        result = subprocess.run([PETAL, "serve", str(tflite), "--port", str(port), *options], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Serving" not in result.stdout, result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("petal: error: "), result.stderr
