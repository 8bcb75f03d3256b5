"""tests/integration/test_console.py — the web console at / (server/console/, embedded in the
binary) in a real headless browser: Debian's Chromium driven by Playwright (pip), with
screenshots under <build>/test-output/console/*.png.

Without Playwright (tests/requirements.txt) or a Chromium binary the browser tests FAIL, naming
what is missing (an unmet dependency is no pass and no skip);
the static-route test (headers, ETag, 304, CSP) needs no browser and always runs.
Flow (auth off, 20 ms engine steps so streaming is visibly incremental): upload a
save_pretrained folder through the file input and another by a simulated drop, see both in
the catalogue with kind and rank, stream a completion (the text grows over several
updates), compare two adapters side by side (each pane equals the API's greedy output for
the same request, and they differ), the metrics plots have points, delete through the UI.
Auth on: no key → the key prompt; a wrong key → its 401 message; a tenant key → only that
tenant's adapters (and the public ones)."""

import base64
import json
import os
import shutil
import tempfile
import time

import harness
from harness import test

FIX = os.path.join(harness.ROOT, "tests", "fixtures", "adapters")
OUT = os.path.join(os.path.dirname(harness.BIN), "test-output", "console")
PROMPT = "Once upon a time"
MAX_TOKENS = 24
ADMIN_KEY = "console-test-admin-key"
TMP = tempfile.mkdtemp(prefix="peftd-console-")


def browser_or_fail():
    """(playwright context manager, chromium path); a missing one fails the test."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise AssertionError("Playwright is not installed (tests/requirements.txt: make venv)")
    exe = os.environ.get("PEFTD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        raise AssertionError("no Chromium binary (apt-get install chromium, or set PEFTD_CHROMIUM)")
    return sync_playwright, exe


class Browser:
    """One headless Chromium page on a daemon; collects console errors of the page."""

    def __init__(self, daemon):
        sync_playwright, exe = browser_or_fail()
        self.pw = sync_playwright().start()
        try:
            self.browser = self.pw.chromium.launch(executable_path=exe, headless=True,
                                                   args=["--no-sandbox", "--disable-gpu"])
        except Exception:
            self.pw.stop()
            raise
        self.page = self.browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.base = "http://127.0.0.1:%d" % daemon.port

    def shot(self, name):
        os.makedirs(OUT, exist_ok=True)
        path = os.path.join(OUT, name + ".png")
        self.page.screenshot(path=path, full_page=True)
        assert os.path.getsize(path) > 10000, path
        return path

    def close(self):
        self.browser.close()
        self.pw.stop()


def wait_js(page, expr, timeout=30):
    """Polls a JavaScript expression until it is truthy (page.wait_for_function compiles
    its predicate with new Function, which the console's CSP forbids: no unsafe-eval)."""
    deadline = time.time() + timeout * harness.SLOW
    while True:
        v = page.evaluate(expr)
        if v:
            return v
        assert time.time() < deadline, "timed out waiting for: " + expr
        time.sleep(0.05)


def api_complete(daemon, model, headers=None):
    body = {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
    st, _, data = daemon.request("POST", "/v1/completions", body, headers=headers)
    assert st == 200, (st, data[:300])
    return json.loads(data)["choices"][0]["text"]


def fixture_paths(fix):
    d = os.path.join(FIX, fix)
    return [os.path.join(d, n) for n in sorted(os.listdir(d))]  # reference.json too: the page filters


@test
def static_route_headers_etag_csp():
    d = harness.daemon
    st, h, body = d.request("GET", "/")
    assert st == 200 and h["content-type"] == "text/html; charset=utf-8", (st, h)
    assert b"/console/console.js" in body and b"<script>" not in body, "no inline script"
    csp = h["content-security-policy"]
    for part in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert part in csp, csp
    assert "unsafe-inline" not in csp, csp
    assert h["x-content-type-options"] == "nosniff" and h["cache-control"] == "no-cache", h
    etag = h["etag"]
    assert etag.startswith('"') and etag.endswith('"'), etag
    st, h2, body2 = d.request("GET", "/", headers={"If-None-Match": etag})
    assert st == 304 and body2 == b"" and h2["etag"] == etag, (st, h2)
    st, _, _ = d.request("GET", "/", headers={"If-None-Match": '"other"'})
    assert st == 200
    types = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8",
             "index.html": "text/html; charset=utf-8"}
    for n, t in types.items():
        st, h, b = d.request("GET", "/console/" + n)
        src = open(os.path.join(harness.ROOT, "server", "console", n), "rb").read()
        assert st == 200 and h["content-type"] == t and b == src, (n, st, h)
        assert h["etag"] != etag or n == "index.html", "each file its own ETag"
    st, h, b = d.request("HEAD", "/console/console.js")
    assert st == 200 and b == b"", st
    st, _, b = d.request("GET", "/console/../README.md")
    assert st == 404, st
    st, _, b = d.request("GET", "/console/nope.js")
    assert st == 404 and json.loads(b)["error"]["code"] == "not_found", b
    st, h, _ = d.request("POST", "/", body={})
    assert st == 405 and h["allow"] == "GET, HEAD", (st, h)


def drop_files(page, paths, folder):
    """A simulated drag-and-drop of files (DataTransfer + drop event) on the drop zone."""
    files = [{"name": os.path.basename(p), "b64": base64.b64encode(open(p, "rb").read()).decode()} for p in paths]
    page.evaluate("""([files, folder]) => {
        const dt = new DataTransfer();
        for (const f of files) {
            const bin = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bin], f.name));
        }
        document.getElementById('upname').value = folder;
        const zone = document.getElementById('drop');
        zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [files, folder])


def upload_and_wait(page, name):
    page.click("#upbtn")
    page.wait_for_selector("#upmsg.ok", timeout=30000)
    assert name in page.inner_text("#upmsg"), page.inner_text("#upmsg")
    assert page.eval_on_selector("#upprog", "p => p.value") == 1
    page.wait_for_selector('tr[data-name="%s"]' % name, timeout=10000)


def row(page, name):
    return page.eval_on_selector('tr[data-name="%s"]' % name,
                                 "tr => [...tr.cells].map(c => c.textContent)")


def run_and_watch(page):
    """Clicks Run with an observer recording #outA's text length at every change."""
    page.evaluate("""() => {
        window.__lens = [];
        const o = document.getElementById('outA');
        new MutationObserver(() => window.__lens.push(o.textContent.length))
            .observe(o, {childList: true, characterData: true, subtree: true});
    }""")
    page.click("#run")
    wait_js(page, "document.getElementById('outA').dataset.done === '1'", 60)
    if page.eval_on_selector("#paneB", "p => !p.hidden"):
        wait_js(page, "document.getElementById('outB').dataset.done === '1'", 60)
    return page.evaluate("window.__lens")


@test
def browser_upload_stream_compare_metrics_delete():
    dm = harness.Daemon(env={"PEFTD_DEBUG_STEP_DELAY_US": "20000"})
    b = None
    try:
        b = Browser(dm)
        page = b.page
        page.goto(b.base + "/")
        page.wait_for_selector("body[data-loaded='1']", timeout=15000)
        assert "no adapters yet" in page.inner_text("#adapters")

        # upload 1: a save_pretrained folder's files through the file input
        page.set_input_files("#files", fixture_paths("lora_r8_all"))
        picked = page.inner_text("#picked")
        assert "adapter_config.json" in picked and "reference.json" not in picked, picked
        page.fill("#upname", "story-r8")
        upload_and_wait(page, "story-r8")
        # upload 2: by a simulated drop
        drop_files(page, fixture_paths("ia3"), "story-ia3")
        upload_and_wait(page, "story-ia3")
        r8, ia3 = row(page, "story-r8"), row(page, "story-ia3")
        assert r8[1] == "lora" and r8[2] == "8" and r8[3] == "v1", r8
        assert ia3[1] == "ia3" and ia3[3] == "v1", ia3
        st, _, data = dm.request("GET", "/v1/adapters")
        assert sorted(a["id"] for a in json.loads(data)["data"]) == ["story-ia3", "story-r8"], data

        # stream one completion: the text appears over several updates
        page.fill("#prompt", PROMPT)
        page.fill("#maxtok", str(MAX_TOKENS))
        page.fill("#temp", "0")
        page.select_option("#modelA", "story-r8")
        lens = run_and_watch(page)
        text_a = page.inner_text("#outA")
        assert text_a and len(set(lens)) >= 4 and lens == sorted(lens), lens
        assert int(page.get_attribute("#outA", "data-chunks")) >= 4
        assert text_a == api_complete(dm, "story-r8"), (text_a, api_complete(dm, "story-r8"))

        # side by side: two adapters, the same greedy request
        page.select_option("#modelB", "story-ia3")
        run_and_watch(page)
        out_a, out_b = page.inner_text("#outA"), page.inner_text("#outB")
        ref_a, ref_b = api_complete(dm, "story-r8"), api_complete(dm, "story-ia3")
        assert out_a == ref_a and out_b == ref_b, (out_a, ref_a, out_b, ref_b)
        assert out_a != out_b, "the two adapters should answer differently: %r" % out_a
        print("    compare: A=%r B=%r" % (out_a, out_b))

        # metrics plots: points, and the throughput saw the generated tokens
        wait_js(page, "+document.getElementById('plot-tps').dataset.points >= 3", 15)
        for c in ("plot-tps", "plot-queue", "plot-hits"):
            assert int(page.get_attribute("#" + c, "data-points")) >= 3, c
        assert float(page.inner_text("#v-tps") or 0) >= 0 and page.inner_text("#v-hits") != "–"
        # the peak of the throughput plot is > 0 (tokens were generated while it polled)
        assert page.evaluate("Math.max(...plots.tps)") > 0, page.evaluate("plots.tps")
        b.shot("01-catalogue-compare-metrics")
        # chat with a model that has no chat template: each pane shows the API's 400 message
        page.select_option("#mode", "chat")
        run_and_watch(page)
        st, _, data = dm.request("POST", "/v1/chat/completions", {"model": "story-r8", "max_tokens": 4,
                                                                   "messages": [{"role": "user", "content": PROMPT}]})
        msg = json.loads(data)["error"]["message"]
        assert st == 400 and page.get_attribute("#outA", "class") == "error", st
        assert page.inner_text("#outA").startswith("400: " + msg), (page.inner_text("#outA"), msg)
        b.shot("02-chat-error-shown")
        page.select_option("#mode", "completion")
        b.errors = [e for e in b.errors if "400" not in e]  # the refused chat requests


        # delete through the UI (two clicks)
        page.click('tr[data-name="story-ia3"] button')
        page.click('tr[data-name="story-ia3"] button')
        page.wait_for_selector('tr[data-name="story-ia3"]', state="detached", timeout=10000)
        assert dm.request("GET", "/v1/adapters/story-ia3")[0] == 404
        assert row(page, "story-r8")
        b.shot("03-after-delete")
        assert not b.errors, b.errors
    finally:
        if b:
            b.close()
        dm.close()


@test
def browser_auth_key_prompt_and_tenant_scope():
    cfg = os.path.join(TMP, "auth.json")
    with open(cfg, "w") as f:
        json.dump({"auth": {"enabled": True, "admin_key_env": "PEFTD_CONSOLE_ADMIN"}}, f)
    dm = harness.Daemon(["--config", cfg], env={"PEFTD_CONSOLE_ADMIN": ADMIN_KEY})
    b = None
    try:
        admin = {"Authorization": "Bearer " + ADMIN_KEY}
        keys = {}
        for t in ("acme", "globex"):
            st, _, data = dm.request("POST", "/v1/admin/tenants", {"id": t, "weight": 1}, headers=admin)
            assert st == 201, (st, data)
            st, _, data = dm.request("POST", "/v1/admin/tenants/%s/keys" % t, headers=admin)
            assert st == 201, (st, data)
            keys[t] = json.loads(data)["key"]
            st, _ = dm.upload(t + "-bot", os.path.join(FIX, "lora_r1_all"), {"Authorization": "Bearer " + keys[t]})
            assert st == 201, st
        st, _ = dm.upload("shared", os.path.join(FIX, "lora_r8_all"), admin)
        assert st == 201, st

        b = Browser(dm)
        page = b.page
        page.goto(b.base + "/")
        page.wait_for_selector("#keydlg[open]", timeout=15000)  # no key: the prompt
        b.shot("04-auth-prompt")
        page.fill("#keyin", "pk_wrong")
        page.click("#keyform button[type=submit]")
        wait_js(page, "document.getElementById('keyerr').textContent.startsWith('401')", 10)
        assert page.is_visible("#keydlg")
        page.fill("#keyin", keys["acme"])
        page.click("#keyform button[type=submit]")
        page.wait_for_selector("body[data-loaded='1']", timeout=15000)
        names = page.eval_on_selector_all("#adapters tr[data-name]", "rs => rs.map(r => r.dataset.name)")
        assert sorted(names) == ["acme-bot", "shared"], names
        assert row(page, "acme-bot")[5] == "acme" and row(page, "shared")[5] == "public"
        models = page.eval_on_selector_all("#modelA option", "os => os.map(o => o.value)")
        assert "globex-bot" not in models and "acme-bot" in models, models
        assert page.evaluate("sessionStorage.getItem('peftd.key')") == keys["acme"]
        # the key is sent on streams too: the tenant's adapter answers as over the API
        page.select_option("#modelA", "acme-bot")
        page.fill("#maxtok", str(MAX_TOKENS))
        run_and_watch(page)
        assert page.inner_text("#outA") == api_complete(dm, "acme-bot", {"Authorization": "Bearer " + keys["acme"]})
        # deleting the public adapter is refused for a tenant: the error body's message is shown
        page.click('tr[data-name="shared"] button')
        page.click('tr[data-name="shared"] button')
        page.wait_for_selector("#banner:not([hidden])", timeout=10000)
        assert page.inner_text("#banner").startswith("delete shared: 403"), page.inner_text("#banner")
        # /metrics stays open with auth on: the plots fill without the key too
        wait_js(page, "+document.getElementById('plot-tps').dataset.points >= 2", 15)
        b.shot("05-auth-tenant-view")
        b.errors = [e for e in b.errors if "401" not in e and "403" not in e]  # the refused calls
        assert not b.errors, b.errors
    finally:
        if b:
            b.close()
        dm.close()


if __name__ == "__main__":
    try:
        harness.run_tests(__file__)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
