"""Install the packages package-lock.json pins, for machines without npm.

Each tarball comes from the npm registry (NPM_CONFIG_REGISTRY, default the public one)
and is checked against the lockfile's integrity hash before it is unpacked into
node_modules/. `npm ci` does the same where npm is installed.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fetch(name: str, version: str, integrity: str, registry: str) -> None:
    algorithm, expected = integrity.split("-", 1)
    url = f"{registry.rstrip('/')}/{name}/-/{name.split('/')[-1]}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise SystemExit(f"{name}@{version}: integrity mismatch (expected {expected}, got {digest})")
    target = ROOT / "node_modules" / name
    shutil.rmtree(target, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for member in archive.getmembers():
            if not member.isfile() or not member.name.startswith("package/"):
                continue
            relative = Path(member.name[len("package/"):])
            if relative.is_absolute() or ".." in relative.parts:
                raise SystemExit(f"{name}@{version}: unsafe path {member.name} in the tarball")
            out = target / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(archive.extractfile(member).read())
    print(f"fetched {name}@{version} ({len(data)} bytes, {algorithm} verified)")


def main() -> None:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    registry = os.environ.get("NPM_CONFIG_REGISTRY", "https://registry.npmjs.org")
    for path, package in lock["packages"].items():
        if path.startswith("node_modules/"):
            fetch(path[len("node_modules/"):], package["version"], package["integrity"], registry)
    (ROOT / "node_modules" / ".package-lock.json").write_text(json.dumps(lock, indent=2))


if __name__ == "__main__":
    sys.exit(main())
