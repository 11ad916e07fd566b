"""The shipped nginx site in front of real gunicorn: sign-in, pages, static files, forms, uploads, the API,
/metrics behind its allow list, TLS that makes cookies Secure, and forwarded headers a client cannot forge."""
import gzip
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, SAMPLE, fake_trainer_command, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
OPENSSL = shutil.which("openssl")
SITE = ROOT / "deploy" / "nginx-tunix-rt.conf"

pytestmark = pytest.mark.skipif(not NGINX or not OPENSSL, reason="Debian's nginx (or openssl) is not installed "
                                                                  "(make test installs nginx when run as root)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/api/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


@pytest.fixture
def gunicorn_port(app, database_url, artifacts_root, tmp_path):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, HOST="127.0.0.1", PORT=str(port), WEB_CONCURRENCY="1",
               GUNICORN_THREADS="4", TUNIX_ARTIFACTS_ROOT=str(artifacts_root), SECRET_KEY=uuid.uuid4().hex,
               TUNIX_INSTANCE_DIR=str(tmp_path / "instance"), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus"),
               TUNIX_TRAIN_COMMAND=shlex.join(fake_trainer_command()), TUNIX_TRUSTED_PROXIES="127.0.0.1")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _healthy(port), timeout=60)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def nginx_ports(gunicorn_port, tmp_path):
    """nginx running deploy/nginx-tunix-rt.conf on loopback ports, with a throwaway certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    http_port, https_port = free_port(), free_port()
    site = SITE.read_text()
    for old, new in (("127.0.0.1:8000", f"127.0.0.1:{gunicorn_port}"), ("listen 80;", f"listen 127.0.0.1:{http_port};"),
                     ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
                     ("/etc/ssl/tunix-rt/fullchain.pem", str(cert)), ("/etc/ssl/tunix-rt/privkey.pem", str(key)),
                     ("/srv/tunix-rt/static/", f"{ROOT}/static/"),
                     ("client_max_body_size 32m;", "client_max_body_size 1m;")):  # the limit, made cheap to cross
        assert old in site, old
        site = site.replace(old, new)
    (tmp_path / "site.conf").write_text(site)
    for folder in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / folder).mkdir()
    (tmp_path / "nginx.conf").write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy; fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/site.conf;
}}
""")
    proc = subprocess.Popen([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _connects(https_port) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.stderr.read().decode()
        yield http_port, https_port
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=30)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Browser:
    """Just enough of a browser over HTTPS: cookies, a Referer, and a source address of choice."""

    def __init__(self, port: int, source: str = "127.0.0.1"):
        self.port, self.source, self.cookies = port, source, {}
        self.context = ssl.create_default_context()
        self.context.check_hostname, self.context.verify_mode = False, ssl.CERT_NONE

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30,
                                                 source_address=(self.source, 0))
        headers = {"Referer": f"https://127.0.0.1:{self.port}/", **(headers or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        for header in response.headers.get_all("Set-Cookie") or []:
            name, value = header.split(";", 1)[0].split("=", 1)
            self.cookies[name] = value
        return response.status, response.headers, data.decode("utf-8", "replace")

    def csrf(self, path: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', self.request("GET", path)[2])[1]

    def post_form(self, path: str, fields: dict, files: dict | None = None):
        fields = {**fields, "csrf_token": self.csrf(path if path != "/login" else "/login")}
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]
        for name, (filename, content) in (files or {}).items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f'Content-Type: application/octet-stream\r\n\r\n'.encode() + content + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def test_the_shipped_nginx_site_in_front_of_gunicorn(nginx_ports, credentials):
    http_port, https_port = nginx_ports
    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
    plain.request("GET", "/runs", headers={"Host": "attacker.example"})
    redirect = plain.getresponse()
    # To the site's own name, whatever Host the client sent.
    assert redirect.status == 301 and redirect.headers["Location"] == "https://tunix-rt.example.internal/runs"

    browser = Browser(https_port)
    status, headers, _ = browser.request("GET", "/runs")
    assert status == 302 and "/login" in headers["Location"]
    status, headers, body = browser.request("GET", "/login")
    assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    cookie = headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie, cookie
    # A form post on HTTPS at a port other than 443 passes the CSRF referrer check: Host keeps its port.
    status, headers, _ = browser.post_form("/login", {"username": credentials.username,
                                                      "password": credentials.password})
    assert status == 303 and headers["Location"] == "/runs"
    status, _, body = browser.request("GET", "/runs")
    assert status == 200 and credentials.username in body

    status, headers, css = browser.request("GET", "/static/css/app.css")
    assert status == 200 and ".status-block" in css and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Strict-Transport-Security"] == "max-age=63072000"  # static files too
    assert browser.request("GET", "/runs")[1]["Strict-Transport-Security"] == "max-age=63072000"
    # Text goes out compressed, and static files are cached for a year under versioned URLs.
    versioned = re.search(r'src="(/static/vendor/htmx\.min\.js\?v=[0-9a-f]{12})"', body)
    assert versioned, "pages link static files with their content's version"
    status, headers, js = browser.request("GET", versioned[1], headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip" and "htmx" in js
    assert "max-age=31536000" in headers["Cache-Control"] and "immutable" in headers["Cache-Control"]
    for path in ("/static/css/app.css", "/runs"):
        status, headers, _ = browser.request("GET", path, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip", path

    status, headers, _ = browser.post_form("/runs/new", {"dataset_key": SAMPLE, "mode": "sync"})
    assert status == 303
    run_path = headers["Location"]
    status, _, fragment = browser.request("GET", f"{run_path}/status?seen=running")
    assert status == 200 and 'id="run-status"' in fragment and 'hx-swap-oob="true"' in fragment
    status, _, log = browser.request("GET", f"{run_path}/log.txt")
    assert status == 200 and "fake trainer: 240 examples" in log
    # The run's stored files, streamed through nginx unbuffered, a Range request answered as such.
    status, _, whole = browser.request("GET", f"{run_path}/artifacts/run_config.json")
    assert status == 200 and json.loads(whole)["dataset_key"] == SAMPLE
    status, headers, part = browser.request("GET", f"{run_path}/artifacts/run_config.json",
                                            headers={"Range": "bytes=2-11"})
    assert status == 206 and part == whole[2:12] and headers["Content-Range"] == f"bytes 2-11/{len(whole)}"

    jsonl = b'{"prompt": "2+2?", "response": "4"}\n{"prompt": "3+3?", "response": "6"}\n'
    status, headers, _ = browser.post_form("/datasets", {"name": "through-nginx"}, {"file": ("d.jsonl", jsonl)})
    assert status == 303 and headers["Location"].endswith("/datasets/through-nginx-v1")

    api = Browser(https_port)
    status, headers, body = api.request("GET", "/api/tunix/runs")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer") and json.loads(body)["error"]
    status, headers, body = api.request("GET", "/api/tunix/runs", headers={
        "Authorization": f"Bearer {credentials.token}", "Accept-Encoding": "gzip"})
    assert status == 200 and len(json.loads(body)["runs"]) == 1 and headers["Content-Encoding"] == "gzip"
    too_big = json.dumps({"name": "big", "jsonl": "x" * 1_500_000}).encode()
    status, headers, body = api.request("POST", "/api/datasets", too_big, {
        "Authorization": f"Bearer {credentials.token}", "Content-Type": "application/json"})
    assert status == 413 and headers["Content-Type"].startswith("application/json")
    assert set(json.loads(body)) == {"error", "details"}

    assert Browser(https_port).request("GET", "/metrics")[0] == 200  # from 127.0.0.1: on the allow list
    assert Browser(https_port, source="127.0.0.2").request("GET", "/metrics")[0] == 403

    status, headers, body = Browser(https_port).request("GET", "/login", headers={
        "X-Forwarded-Prefix": "//evil.example", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"})
    assert "evil.example" not in body and "evil.example" not in headers.get("Location", "")
    assert "Secure" in headers["Set-Cookie"], "the scheme is nginx's word, not the client's"
