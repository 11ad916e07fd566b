"""The systemd units in deploy/: systemd itself reads them without a complaint, and their stop timeouts
leave room for the graces the app's shutdown needs."""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess

import pytest

from app.config import load_settings
from tests.helpers import ROOT

DEPLOY = ROOT / "deploy"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / name).read_text())
    return parser


def seconds(value: str) -> float:
    return float(value[:-1]) if value.endswith("s") else float(value)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (Debian's systemd package)")
def test_systemd_reads_both_units_without_a_complaint(tmp_path):
    # The units name /opt/tunix-rt and /etc/tunix-rt; here they point at this checkout and a scratch file.
    environment = tmp_path / "tunix-rt.env"
    environment.write_text((DEPLOY / "tunix-rt.env.example").read_text())
    paths = []
    for source, target in (("tunix-rt-web.service", "tunix-rt-web.service"),
                           ("tunix-rt-worker@.service", "tunix-rt-worker@1.service")):
        text = (DEPLOY / source).read_text().replace("/etc/tunix-rt/tunix-rt.env", str(environment))
        (tmp_path / target).write_text(text.replace("/opt/tunix-rt", str(ROOT)))
        paths.append(str(tmp_path / target))
    checked = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *paths], capture_output=True, text=True,
                             timeout=60)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr


def test_a_stopped_worker_hands_its_run_back_before_systemd_kills_it():
    service = unit("tunix-rt-worker@.service")["Service"]
    settings = load_settings()
    graces = settings["WORKER_SHUTDOWN_GRACE_SECONDS"] + settings["KILL_GRACE_SECONDS"]
    assert service["KillMode"] == "mixed", "SIGTERM must reach the worker alone, not its trainer"
    assert service["KillSignal"] == "SIGTERM"
    assert seconds(service["TimeoutStopSec"]) > graces
    assert service["Restart"] == "on-failure"


def test_the_web_unit_outlasts_gunicorn_s_graceful_stop():
    service = unit("tunix-rt-web.service")["Service"]
    graceful = float(re.search(r"^graceful_timeout = (\d+)", (ROOT / "gunicorn.conf.py").read_text(), re.M).group(1))
    assert seconds(service["TimeoutStopSec"]) > graceful
    assert service["Restart"] == "on-failure"


def test_the_environment_file_sets_only_settings_the_app_reads():
    read = (ROOT / "app" / "config.py").read_text() + (ROOT / "gunicorn.conf.py").read_text()
    names = re.findall(r"^([A-Z_]+)=", (DEPLOY / "tunix-rt.env.example").read_text(), re.M)
    assert names and [name for name in names if f'"{name}"' not in read] == []
