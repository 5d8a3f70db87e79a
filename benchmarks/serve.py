"""Requests per second, latency and peak memory of `petal serve`'s POST /predict on loopback, with one huge image.

    python benchmarks/serve.py [--models FILE.tflite ...] [--photos DIR] [--requests 200] [--big-format jpeg|png]

For each model: starts `petal serve MODEL` on a free 127.0.0.1 port, then, with 1, 8 and 32 concurrent clients
(threads, one connection per request), sends --requests uploads of normal photos (the first --photos files of
a flower_photos class folder, in turn) plus one 9400 x 9400 image (a smooth gradient: a small file, 88 million
pixels) sent third. Prints requests/s with p50 and p99 latency of the photos, the huge image's own status and
latency, and the server's peak RSS (VmHWM) after the row. Bounded in count and time; talks to 127.0.0.1 only.
"""

import argparse
import http.client
import io
import socket
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_RUN = HERE / "results" / "deploy" / "run-tutorial" / "export"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path,
                        default=[DEFAULT_RUN / "model-float32.tflite", DEFAULT_RUN / "model-int8.tflite"])
    parser.add_argument("--photos", type=Path, default=HERE.parent.parent / "shared" / "datasets" / "flower_photos" / "sunflowers")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--big-format", choices=("jpeg", "png"), default="jpeg")
    args = parser.parse_args()
    photos = [path.read_bytes() for path in sorted(args.photos.glob("*.jpg"))[:20]]
    big = _huge_image(args.big_format)
    print(f"machine: {machine()}; {len(photos)} photos of {args.photos.name} ({sum(map(len, photos)) / len(photos) / 1024:.0f} KB "
          f"on average) and one 9400x9400 {args.big_format.upper()} ({len(big) / 1024 / 1024:.1f} MB) per row of "
          f"{args.requests} photo requests\n")
    print("| model | clients | requests/s | p50 ms | p99 ms | errors | 9400x9400: status, ms | server peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models:
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "petal", "serve", str(model), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_until_up(port)
            _post(port, photos[0])  # warm-up
            for clients in (1, 8, 32):
                uploads = [photos[i % len(photos)] for i in range(args.requests)]
                uploads.insert(2, big)
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=clients) as pool:
                    results = list(pool.map(lambda data: _timed_post(port, data), uploads))
                seconds = time.perf_counter() - started
                big_ms, big_status = results.pop(2)
                latencies = sorted(ms for ms, status in results if status == 200)
                errors = sum(status != 200 for _, status in results)
                p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                print(f"| {model.parent.parent.name}/{model.name} | {clients} | {len(uploads) / seconds:.0f} | "
                      f"{statistics.median(latencies):.1f} | {p99:.1f} | {errors} | {big_status}, {big_ms:.0f} | "
                      f"{_peak_rss_mb(server.pid):.0f} |", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)


def _huge_image(fmt: str) -> bytes:
    from PIL import Image

    gradient = Image.linear_gradient("L").resize((9400, 9400))
    image = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient.transpose(Image.Transpose.ROTATE_180)))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **({"quality": 75} if fmt == "jpeg" else {"compress_level": 9}))
    return buffer.getvalue()


def _peak_rss_mb(pid: int) -> float:
    """The server's peak resident memory so far (Linux's VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def _post(port: int, photo: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    status = connection.getresponse().status
    connection.close()
    return status


def _timed_post(port: int, photo: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    status = _post(port, photo)
    return 1000 * (time.perf_counter() - started), status


if __name__ == "__main__":
    main()
