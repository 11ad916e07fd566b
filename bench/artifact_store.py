"""The artifact store: upload and download throughput through the project against obstore called directly
on the same file, and the web process's memory while it streams a large artifact to a browser.

The store is moto's S3 server in a process of its own on loopback (the protocol a bucket speaks; a real
bucket's figures depend on its network). The project's upload also hashes every byte (SHA-256, and the
MD5 of each part that S3's ETag is checked against) and reads the object's size back; its download
checks the SHA-256 before the file takes its name. The web figure is gunicorn's worker, as deployed,
serving `/runs/<id>/artifacts/...` while its resident memory is sampled every 20 ms.

    .venv/bin/python bench/artifact_store.py [--mb 256] [--repeats 3] [--stream-mb 1024]
"""
from __future__ import annotations

import argparse
import hashlib
import http.cookiejar
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_db import scratch_database  # noqa: E402
from bench.output import write_results  # noqa: E402

BUCKET = "tunix-bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def start_s3() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in its own process, with the bench's bucket."""
    import boto3

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=BUCKET)
    return proc, endpoint


def write_random_file(path: Path, mb: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as out:
        for index in range(mb):
            chunk = index.to_bytes(8, "little") + block[8:]  # no two blocks alike
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def throughput(endpoint: str, source: Path, mb: int, repeats: int, folder: Path) -> dict:
    """MB/s of uploads and downloads, the project's against obstore's own, interleaved; medians."""
    import obstore

    from app.artifacts import store as object_store
    from app.artifacts.store import PART_SIZE, UPLOAD_CONCURRENCY, Retrier, StoreSettings

    settings = StoreSettings(url=f"s3://{BUCKET}/throughput", s3_endpoint_url=endpoint)
    store = object_store.open_store(settings)
    retry = Retrier(settings)
    figures: dict[str, list[float]] = {"project_upload": [], "direct_upload": [], "project_download": [],
                                       "direct_download": []}
    for repeat in range(repeats):
        started = time.perf_counter()
        entry = object_store.put_file(store, settings, f"project/{repeat}.bin", source, retry)
        figures["project_upload"].append(mb / (time.perf_counter() - started))
        started = time.perf_counter()
        obstore.put(store, f"direct/{repeat}.bin", source, chunk_size=PART_SIZE, max_concurrency=UPLOAD_CONCURRENCY)
        figures["direct_upload"].append(mb / (time.perf_counter() - started))

        target = folder / "fetched.bin"
        started = time.perf_counter()
        object_store.download(store, entry, target, retry)
        figures["project_download"].append(mb / (time.perf_counter() - started))
        target.unlink()
        started = time.perf_counter()
        with target.open("wb") as out:
            for chunk in obstore.get(store, f"direct/{repeat}.bin").stream(min_chunk_size=object_store.DOWNLOAD_CHUNK):
                out.write(chunk)
        figures["direct_download"].append(mb / (time.perf_counter() - started))
        target.unlink()
    medians = {name: round(statistics.median(values), 1) for name, values in figures.items()}
    medians["upload_ratio"] = round(medians["project_upload"] / medians["direct_upload"], 3)
    medians["download_ratio"] = round(medians["project_download"] / medians["direct_download"], 3)
    return medians


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read())[1]) / 1024


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as found:
            return [int(p) for p in found.read().split()]
    except OSError:
        return []


def stream_memory(url: str, endpoint: str, stream_mb: int, folder: Path) -> dict:
    """gunicorn serving a `stream_mb` artifact: the worker's memory idle (after a first small request) and
    at its peak while the whole file streams; the bytes are checked on arrival."""
    from app import create_app
    from app.accounts import service as accounts
    from app.artifacts.run_store import StoringProgress
    from app.datasets.sample import SAMPLE_KEY
    from app.runs import artifacts

    prefix = f"s3://{BUCKET}/web-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_URL=prefix, TUNIX_S3_ENDPOINT_URL=endpoint,
               **CREDENTIALS)
    os.environ.update(CREDENTIALS)
    app = create_app({"DATABASE_URL": url, "ARTIFACTS_URL": prefix, "S3_ENDPOINT_URL": endpoint,
                      "ARTIFACTS_ROOT": str(folder / "unused"), "WTF_CSRF_ENABLED": False})
    scratch = folder / "scratch"
    (scratch / "model").mkdir(parents=True)
    expected = write_random_file(scratch / "model" / "model.safetensors", stream_mb)
    with app.app_context():
        password = "bench password 1234"
        user, _ = accounts.create_user("streamer", password=password)
        client = app.test_client()
        run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE_KEY},
                             headers={"Authorization": f"Bearer {accounts.create_token(user, 'bench')[1]}"}
                             ).get_json()["run_id"]
        from app.models import TunixRun
        from app.extensions import db

        files = artifacts.of_run(db.session.get(TunixRun, uuid.UUID(run_id)), app.config, retry_seconds=60)
        files.store_final(scratch, ["model/model.safetensors"], StoringProgress())
    (scratch / "model" / "model.safetensors").unlink()

    port = free_port()
    env.update(HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1", GUNICORN_THREADS="4",
               SECRET_KEY=uuid.uuid4().hex, TUNIX_INSTANCE_DIR=str(folder / "instance"),
               TUNIX_TRAIN_COMMAND=shlex.join([sys.executable, "-c", "pass"]))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    web = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        form = opener.open(f"{base}/login", timeout=30).read().decode()
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
        opener.open(f"{base}/login", data=urllib.parse.urlencode(
            {"username": "streamer", "password": password, "csrf_token": token}).encode(), timeout=30).read()
        address = f"{base}/runs/{run_id}/artifacts/model/model.safetensors"
        first = urllib.request.Request(address, headers={"Range": "bytes=0-1023"})
        assert len(opener.open(first, timeout=30).read()) == 1024  # the route, the store client: loaded
        worker = children(web.pid)[0]
        idle = rss_mb(worker)
        peak, done = idle, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mb(worker))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        digest, received = hashlib.sha256(), 0
        started = time.perf_counter()
        with opener.open(address, timeout=600) as response:
            while chunk := response.read(1024 * 1024):
                digest.update(chunk)
                received += len(chunk)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        assert received == stream_mb * 1024 * 1024 and digest.hexdigest() == expected, "the bytes differ"
    finally:
        web.terminate()
        web.wait(timeout=30)
    return {"stream_mb": stream_mb, "web_rss_idle_mb": round(idle, 1), "web_rss_peak_mb": round(peak, 1),
            "web_rss_growth_mb": round(peak - idle, 1), "stream_mb_per_s": round(stream_mb / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="size of the file uploaded and downloaded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stream-mb", type=int, default=1024, help="size of the artifact the web process streams")
    args = parser.parse_args()
    os.environ.update(CREDENTIALS)
    s3, endpoint = start_s3()
    try:
        with tempfile.TemporaryDirectory(prefix="tunix-bench-store-") as tmp:
            folder = Path(tmp)
            source = folder / "source.bin"
            write_random_file(source, args.mb)
            figures = {"file_mb": args.mb, "repeats": args.repeats,
                       **throughput(endpoint, source, args.mb, args.repeats, folder)}
            source.unlink()
            print(f"{args.mb} MB to and from S3 (moto on loopback), medians of {args.repeats}:")
            print(f"  upload   project {figures['project_upload']:>7} MB/s   obstore directly "
                  f"{figures['direct_upload']:>7} MB/s   ratio {figures['upload_ratio']}")
            print(f"  download project {figures['project_download']:>7} MB/s   obstore directly "
                  f"{figures['direct_download']:>7} MB/s   ratio {figures['download_ratio']}")
            with scratch_database() as url:
                web = stream_memory(url, endpoint, args.stream_mb, folder)
            figures.update(web)
            print(f"web process streaming {args.stream_mb} MB: RSS {web['web_rss_idle_mb']} MB idle, "
                  f"{web['web_rss_peak_mb']} MB at its peak (+{web['web_rss_growth_mb']} MB), "
                  f"{web['stream_mb_per_s']} MB/s")
    finally:
        s3.terminate()
        s3.wait(timeout=30)
    print(f"written to {write_results('artifact_store', figures)}")


if __name__ == "__main__":
    main()
