"""Requests per second and latency of `petal serve`'s POST /predict on loopback.

    python benchmarks/serve.py [--models FILE.tflite ...] [--photo PHOTO] [--requests 200]

For each model: starts `petal serve MODEL` on a free 127.0.0.1 port, then sends --requests uploads of
one photo with 1 and with 8 concurrent clients (threads, each its own connection per request), and
prints requests/s with p50 and p99 latency. Bounded in count and time; talks to 127.0.0.1 only.
"""

import argparse
import http.client
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
    parser.add_argument("--photo", type=Path,
                        default=HERE.parent.parent / "shared" / "datasets" / "flower_photos" / "sunflowers" / "6953297_8576bf4ea3.jpg")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    photo = args.photo.read_bytes()
    print(f"machine: {machine()}; photo {args.photo.name} ({len(photo) / 1024:.0f} KB), {args.requests} requests per row\n")
    print("| model | clients | requests/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "petal", "serve", str(model), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_until_up(port)
            for clients in (1, 8):
                _post(port, photo)  # warm-up
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=clients) as pool:
                    results = list(pool.map(lambda _: _timed_post(port, photo), range(args.requests)))
                seconds = time.perf_counter() - started
                latencies = sorted(ms for ms, ok in results if ok)
                errors = sum(not ok for _, ok in results)
                p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                print(f"| {model.parent.parent.name}/{model.name} | {clients} | {len(results) / seconds:.0f} | "
                      f"{statistics.median(latencies):.1f} | {p99:.1f} | {errors} |", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=10)


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


def _timed_post(port: int, photo: bytes) -> tuple[float, bool]:
    started = time.perf_counter()
    status = _post(port, photo)
    return 1000 * (time.perf_counter() - started), status == 200


if __name__ == "__main__":
    main()
