"""The model registry: how long registering a run's model takes (its files copied store to store, checked) and
how much memory it takes meanwhile, for a model of 100 MB and of 1 GB; and the model page's time with 1,000
versions.

Two copies are measured, both through `registry.service.register` as the web request makes them:
- within one bucket (the run stored where the registry is): the server copies each file (S3 CopyObject);
- across stores (a run stored in the local folder of an earlier set-up, the registry in a bucket): each file
  streams through, a part at a time, every byte checked against the SHA-256 its run recorded.
The store is moto's S3 server in its own process on loopback. Memory is this process's resident set, sampled
every 10 ms during the registration, less what it was before: flat means it does not grow with the model.

    .venv/bin/python bench/model_registry.py [--sizes-mb 100,1024] [--versions 1000] [--page-repeats 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.artifact_store import BUCKET, CREDENTIALS, rss_mb, start_s3, write_random_file  # noqa: E402
from bench.bench_db import scratch_database  # noqa: E402
from bench.output import write_results  # noqa: E402


class PeakMemory:
    """This process's resident memory above where it was when the block began, at its highest."""

    def __enter__(self):
        self.base = self.peak = rss_mb(os.getpid())
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb(os.getpid()))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(os.getpid()))
        self.growth = round(self.peak - self.base, 1)


def completed_run(app, location: str, scratch: Path, owner_id: int):
    """A completed run whose model (the files under scratch/model) is stored at `location`, as a worker stores it."""
    from app.artifacts.run_store import StoringProgress, run_store
    from app.artifacts.store import StoreSettings
    from app.datasets.sample import SAMPLE_KEY
    from app.extensions import db
    from app.models import TunixRun, utcnow

    run = TunixRun(id=uuid.uuid4(), mode="async", status="completed", dataset_key=SAMPLE_KEY, model_id="tiny",
                   config={"dataset_key": SAMPLE_KEY, "model_id": "tiny"}, artifacts_url=location,
                   created_by=owner_id, completed_at=utcnow(), answer_match=0.5, evaluated_on=SAMPLE_KEY)
    db.session.add(run)
    db.session.commit()
    files = run_store(StoreSettings.from_config(app.config), location, run.id)
    files.store_final(scratch, sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file()),
                      StoringProgress())
    return run


def registration(app, owner, source_location: str, size_mb: int, folder: Path) -> dict:
    from app.accounts.service import Actor
    from app.registry import service as registry

    scratch = folder / f"run-{uuid.uuid4().hex[:6]}"
    (scratch / "model").mkdir(parents=True)
    write_random_file(scratch / "model" / "model.safetensors", size_mb)
    (scratch / "model" / "config.json").write_text('{"model_type": "qwen3"}')
    (scratch / "model" / "tokenizer.json").write_text("{}")
    run = completed_run(app, source_location, scratch, owner.id)
    for path in scratch.rglob("*"):
        if path.is_file():
            path.unlink()
    with PeakMemory() as memory:
        started = time.perf_counter()
        found = registry.register(run, f"bench-{uuid.uuid4().hex[:6]}", Actor.of(owner))
        seconds = time.perf_counter() - started
    assert found.created and found.version.size_bytes >= size_mb * 1024 * 1024
    return {"seconds": round(seconds, 2), "mb_per_second": round(size_mb / seconds, 1),
            "rss_growth_mb": memory.growth}


def model_page(app, owner, versions: int, repeats: int) -> dict:
    """GET /models/<name> and the API's first page of versions, with `versions` versions (medians, ms)."""
    import re

    from app.accounts import service as accounts
    from app.extensions import db
    from app.models import ModelAlias, ModelVersion, RegisteredModel, utcnow

    model = RegisteredModel(name="crowded", description="", owner_id=owner.id, created_at=utcnow(),
                            versions_made=versions)
    db.session.add(model)
    db.session.flush()
    files = [{"path": "model.safetensors", "size": 1, "sha256": "0" * 64}]
    db.session.execute(ModelVersion.__table__.insert(), [
        {"model_id": model.id, "number": n, "digest": f"{n:064x}", "size_bytes": 1, "files": files,
         "store_url": "bench", "lineage": {"base": {"kind": "preset", "id": "tiny"}, "dataset_key": "x"},
         "scores": {"answer_match": (n % 97) / 97, "evaluated_on": "x", "examples": 100}, "facts": {},
         "created_at": utcnow()} for n in range(1, versions + 1)])
    last = db.session.scalar(db.select(ModelVersion.id).where(ModelVersion.model_id == model.id,
                                                              ModelVersion.number == versions))
    db.session.add(ModelAlias(model_id=model.id, alias="champion", version_id=last, protected=True,
                              updated_at=utcnow()))
    db.session.commit()
    client = app.test_client()
    form = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    client.post("/login", data={"username": owner.username, "password": "bench password 1234",
                                **({"csrf_token": csrf[1]} if csrf else {})})
    token = accounts.create_token(owner, "bench")[1]
    figures = {}
    for name, path, headers in (("page_ms", "/models/crowded", {}),
                                ("api_versions_ms", "/api/models/crowded/versions",
                                 {"Authorization": f"Bearer {token}"})):
        assert client.get(path, headers=headers).status_code == 200  # warm
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.get(path, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
        figures[name] = round(statistics.median(times), 1)
    figures["page_kb"] = round(len(client.get("/models/crowded").data) / 1024, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-mb", default="100,1024")
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--page-repeats", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mb.split(",")]
    os.environ.update(CREDENTIALS)
    s3, endpoint = start_s3()
    try:
        with scratch_database() as url, tempfile.TemporaryDirectory() as folder:
            from app import create_app
            from app.accounts import service as accounts

            folder = Path(folder)
            bucket = f"s3://{BUCKET}/registry"
            app = create_app({"DATABASE_URL": url, "ARTIFACTS_URL": bucket, "S3_ENDPOINT_URL": endpoint,
                              "ARTIFACTS_ROOT": str(folder / "local"), "WTF_CSRF_ENABLED": False})
            results: dict = {"registration": {}}
            with app.app_context():
                owner, _ = accounts.create_user("bencher", admin=True, password="bench password 1234")
                for size in sizes:
                    for mode, source in (("same_bucket", bucket), ("local_to_bucket", str(folder / "local"))):
                        figures = registration(app, owner, source, size, folder)
                        results["registration"][f"{size}MB_{mode}"] = figures
                        print(f"register {size} MB ({mode.replace('_', ' ')}): {figures['seconds']} s "
                              f"({figures['mb_per_second']} MB/s), memory +{figures['rss_growth_mb']} MB", flush=True)
                page = model_page(app, owner, args.versions, args.page_repeats)
                results["model_page"] = {"versions": args.versions, **page}
                print(f"model page with {args.versions} versions: {page['page_ms']} ms median "
                      f"({page['page_kb']} KB); API first page of versions: {page['api_versions_ms']} ms", flush=True)
            print(f"results: {write_results('model_registry', results)}")
    finally:
        s3.terminate()
        s3.wait()


if __name__ == "__main__":
    main()
