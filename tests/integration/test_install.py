#!/usr/bin/env python3
"""tests/integration/test_install.py — packaging and deploy files, for real:
`make install NOBUILD=1 DESTDIR=<tmp> PREFIX=/usr` stages the tree that $PEFTD_BIN's build
directory holds; the installed binary serves a completion with the installed production
config (auth on, admin key from the environment) and refuses a non-loopback host with auth
off; the Kubernetes manifests pass deploy/k8s/validate.py (kubernetes-validate, strict);
the systemd unit scores <= 3.0 with systemd-analyze security --offline (skipped, with the
reason, where systemd-analyze is missing or older than 252)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import harness
from harness import test

ROOT = harness.ROOT
BUILD = os.path.dirname(harness.BIN)
STAGE = tempfile.mkdtemp(prefix="peftd-destdir-")
INSTALLED = {}


def staged(rel):
    return os.path.join(STAGE, rel.lstrip("/"))


def install():
    if INSTALLED:
        return
    r = subprocess.run(["make", "-s", "--no-print-directory", "install", "NOBUILD=1", "BUILD=" + BUILD,
                        "DESTDIR=" + STAGE, "PREFIX=/usr"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, "make install failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr)
    INSTALLED["ok"] = True


@test
def install_stages_every_file():
    install()
    for rel in ("/usr/bin/peftd", "/usr/bin/peftctl", "/usr/bin/peftd-loadgen",
                "/usr/share/peftd/models/stories260K/config.json",
                "/usr/share/peftd/models/stories260K/model.safetensors",
                "/etc/peftd/peftd.json", "/etc/peftd/peftd.production.json",
                "/usr/lib/systemd/system/peftd.service", "/usr/lib/sysusers.d/peftd.conf",
                "/usr/lib/tmpfiles.d/peftd.conf", "/usr/share/peftd/doc/CHANGELOG.md"):
        assert os.path.exists(staged(rel)), "not installed: " + rel
    assert os.access(staged("/usr/bin/peftd"), os.X_OK)
    unit = open(staged("/usr/lib/systemd/system/peftd.service")).read()
    assert not re.search(r"@[A-Z]+@", unit), "unsubstituted @VAR@ in the unit"
    assert "ExecStart=/usr/bin/peftd serve --config /etc/peftd/peftd.production.json" in unit
    conf = open(staged("/etc/peftd/peftd.json")).read()
    assert '"/usr/share/peftd/models/stories260K"' in conf and '"/var/lib/peftd/store"' in conf, conf
    users = open(staged("/usr/lib/sysusers.d/peftd.conf")).read()
    assert "u peftd 10001" in users, users


@test
def installed_binary_serves_a_completion():
    install()
    saved = harness.BIN
    harness.BIN = staged("/usr/bin/peftd")
    store = tempfile.mkdtemp(prefix="peftd-inst-store-")
    try:
        d = harness.Daemon(["--config", staged("/etc/peftd/peftd.production.json"),
                            "--model", staged("/usr/share/peftd/models/stories260K"), "--store", store],
                           env={"PEFTD_ADMIN_KEY": "install-test-key"}, store=store)
    finally:
        harness.BIN = saved
    try:
        st, obj = d.post("/v1/completions", {"model": "stories260K", "prompt": "Once upon a time",
                                             "max_tokens": 8, "temperature": 0})
        assert st == 401, "auth is on in the production config: %d %s" % (st, obj)
        st, _, body = d.request("POST", "/v1/completions",
                                {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8,
                                 "temperature": 0}, headers={"Authorization": "Bearer install-test-key"})
        assert st == 200, body
        text = json.loads(body)["choices"][0]["text"]
        assert text, body
    finally:
        d.close()
        shutil.rmtree(store, ignore_errors=True)


@test
def installed_binary_refuses_open_non_loopback():
    install()
    r = subprocess.run([staged("/usr/bin/peftd"), "serve", "--config", staged("/etc/peftd/peftd.json"),
                        "--host", "0.0.0.0", "--port", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "auth.allow_unauthenticated" in r.stderr, r.stderr


@test
def kubernetes_manifests_validate():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "k8s", "validate.py")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 failed" in r.stdout.strip().splitlines()[-1], r.stdout


@test
def systemd_unit_exposure_at_most_3():
    if not shutil.which("systemd-analyze"):
        harness.skip("systemd-analyze not installed")
    v = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout.split()
    if len(v) < 2 or not v[1].isdigit() or int(v[1]) < 252:
        harness.skip("systemd-analyze %s has no --offline security scoring (needs >= 252)" % " ".join(v[:2]))
    r = subprocess.run([os.path.join(ROOT, "deploy", "systemd", "check.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    print("    " + r.stdout.strip())


try:
    harness.run_tests(__file__)
finally:
    shutil.rmtree(STAGE, ignore_errors=True)
