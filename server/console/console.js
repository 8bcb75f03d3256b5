// server/console/console.js — the console's behaviour (no framework, no build step):
// API key (sessionStorage, sent as Bearer), adapter catalogue, upload with progress, delete,
// playground (SSE streaming, two models side by side), live /metrics plots on <canvas>.
"use strict";

const $ = (id) => document.getElementById(id);
const KEEP = ["adapter_config.json", "adapter_model.safetensors", "adapter.safetensors"];
const state = { key: sessionStorage.getItem("peftd.key") || "", files: [], base: "" };

// ---- API calls and errors ----
function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}

// The message of an OpenAI-style error body {"error":{"message","code"}}, else the status.
function errorOf(status, text) {
  try {
    const e = JSON.parse(text).error;
    if (e && e.message) return `${status}: ${e.message}` + (e.code ? ` (${e.code})` : "");
  } catch (_) { /* not JSON */ }
  return `HTTP ${status}`;
}

class ApiError extends Error {}

async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const r = await fetch(path, init);
  const text = await r.text();
  if (r.status === 401) askKey(errorOf(r.status, text));
  if (!r.ok) throw new ApiError(errorOf(r.status, text));
  return text ? JSON.parse(text) : null;
}

function banner(msg) {
  $("banner").textContent = msg || "";
  $("banner").hidden = !msg;
}

// ---- the key ----
function askKey(why) {
  $("keyerr").textContent = state.key ? why : "";
  if (!$("keydlg").open) $("keydlg").showModal();
  $("keyin").focus();
}

function setKey(k) {
  state.key = k;
  if (k) sessionStorage.setItem("peftd.key", k);
  else sessionStorage.removeItem("peftd.key");
  $("who").textContent = k ? "key …" + k.slice(-4) : "";
  $("keybtn").textContent = k ? "Sign out" : "API key";
}

// ---- catalogue ----
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function cell(tr, text, cls) {
  const td = tr.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderAdapters(list) {
  const tb = $("adapters");
  tb.replaceChildren();
  if (!list.length) cell(tb.insertRow(), "no adapters yet: upload one below", "muted").colSpan = 7;
  for (const a of list) {
    const tr = tb.insertRow();
    tr.dataset.name = a.id;
    cell(tr, a.id);
    cell(tr, a.kind, "kind");
    cell(tr, a.ranks && a.ranks.length ? [...new Set(a.ranks)].join(", ") : "–", "rank num");
    cell(tr, "v" + a.version, "num");
    cell(tr, fmtBytes(a.bytes), "num");
    cell(tr, a.owner || "public", "muted");
    const b = document.createElement("button");
    b.textContent = "Delete";
    b.className = "danger small";
    b.onclick = () => confirmDelete(b, a.id);
    tr.insertCell().append(b);
  }
}

// Two clicks delete (no window.confirm: it blocks the page).
function confirmDelete(b, name) {
  if (b.dataset.armed) return remove(name);
  b.dataset.armed = "1";
  b.textContent = "Really?";
  setTimeout(() => { delete b.dataset.armed; b.textContent = "Delete"; }, 4000);
}

async function remove(name) {
  try {
    await api("DELETE", "/v1/adapters/" + encodeURIComponent(name));
    banner("");
  } catch (e) { banner(`delete ${name}: ${e.message}`); }
  refresh();
}

function fillSelect(sel, ids, withNone) {
  const keep = sel.value;
  sel.replaceChildren();
  if (withNone) sel.add(new Option("— none —", ""));
  for (const id of ids) sel.add(new Option(id, id));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

async function refresh() {
  try {
    const models = await api("GET", "/v1/models");
    const ids = models.data.map((m) => m.id);
    state.base = (models.data.find((m) => !m.parent) || models.data[0] || {}).id || "";
    $("model").textContent = "model " + state.base;
    fillSelect($("modelA"), ids, false);
    fillSelect($("modelB"), ids, true);
    let list = [], after = "";
    for (;;) {
      const page = await api("GET", "/v1/adapters?limit=1000" + (after ? "&after=" + encodeURIComponent(after) : ""));
      list = list.concat(page.data);
      if (!page.has_more) break;
      after = page.last_id;
    }
    renderAdapters(list);
    document.body.dataset.loaded = "1";
  } catch (e) {
    if (!(e instanceof ApiError) || !$("keydlg").open) banner(e.message);
  }
}

// ---- upload ----
function readDir(entry) { // a dropped folder: its files (one level: save_pretrained is flat)
  return new Promise((resolve) => entry.createReader().readEntries((es) =>
    Promise.all(es.filter((x) => x.isFile).map((x) => new Promise((r) => x.file(r, () => r(null)))))
      .then((fs) => resolve(fs.filter(Boolean))), () => resolve([])));
}

function pickFiles(files, folder) {
  state.files = files.filter((f) => KEEP.includes(f.name));
  const rel = files.length && files[0].webkitRelativePath;
  const name = folder || (rel ? rel.split("/")[0] : "");
  if (name && !$("upname").value) $("upname").value = name;
  $("picked").textContent = state.files.length ? state.files.map((f) => `${f.name} (${fmtBytes(f.size)})`).join(", ")
    : "none of the dropped files is an adapter file (" + KEEP.join(", ") + ")";
  $("upbtn").disabled = !state.files.length;
}

async function onDrop(ev) {
  ev.preventDefault();
  $("drop").classList.remove("over");
  const items = [...(ev.dataTransfer.items || [])].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
  const dir = items.find((e) => e && e.isDirectory);
  if (dir) return pickFiles(await readDir(dir), dir.name);
  pickFiles([...ev.dataTransfer.files]);
}

function upload() {
  const name = $("upname").value.trim();
  if (!name) { $("upmsg").textContent = "give the adapter a name"; return; }
  const fd = new FormData();
  for (const f of state.files) fd.append("file", f, f.name);
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", "/v1/adapters/" + encodeURIComponent(name));
  if (state.key) xhr.setRequestHeader("Authorization", "Bearer " + state.key);
  const prog = $("upprog"), msg = $("upmsg");
  prog.hidden = false; prog.value = 0; msg.className = ""; msg.textContent = "uploading…";
  $("upbtn").disabled = true;
  xhr.upload.onprogress = (e) => { if (e.lengthComputable) prog.value = e.loaded / e.total; };
  xhr.onload = () => {
    $("upbtn").disabled = false;
    if (xhr.status === 200 || xhr.status === 201) {
      const a = JSON.parse(xhr.responseText);
      prog.value = 1;
      msg.className = "ok";
      msg.textContent = `${a.id} v${a.version}: ${a.kind}, ${fmtBytes(a.bytes)}`;
      $("upname").value = "";
      refresh();
    } else {
      msg.className = "error";
      msg.textContent = errorOf(xhr.status, xhr.responseText);
      if (xhr.status === 401) askKey(msg.textContent);
    }
  };
  xhr.onerror = () => { $("upbtn").disabled = false; msg.className = "error"; msg.textContent = "network error"; };
  xhr.send(fd);
}

// ---- playground ----
async function streamInto(model, out, stat) {
  const chat = $("mode").value === "chat";
  const body = { model, stream: true, max_tokens: +$("maxtok").value, temperature: +$("temp").value };
  if (chat) body.messages = [{ role: "user", content: $("prompt").value }];
  else body.prompt = $("prompt").value;
  out.textContent = ""; out.className = ""; out.dataset.done = ""; out.dataset.chunks = "0";
  stat.textContent = "…";
  const t0 = performance.now();
  let n = 0, finish = "";
  try {
    const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions",
      { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    if (!r.ok) throw new ApiError(errorOf(r.status, await r.text()));
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        for (const line of ev.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const d = line.slice(5).trim();
          if (d === "[DONE]") continue;
          const j = JSON.parse(d);
          if (j.error) throw new ApiError(j.error.message);
          const c = j.choices && j.choices[0];
          if (!c) continue;
          out.textContent += chat ? (c.delta && c.delta.content) || "" : c.text || "";
          if (c.finish_reason) finish = c.finish_reason;
          out.dataset.chunks = String(++n);
        }
      }
    }
    const s = (performance.now() - t0) / 1000;
    stat.textContent = `${n} chunk${n === 1 ? "" : "s"} · ${s.toFixed(2)} s` + (finish ? ` · ${finish}` : "");
  } catch (e) {
    out.className = "error";
    out.textContent = e.message;
    stat.textContent = "error";
    if (/^401/.test(e.message)) askKey(e.message);
  }
  out.dataset.done = "1";
}

function run() {
  const a = $("modelA").value, b = $("modelB").value;
  $("nameA").textContent = a; $("nameB").textContent = b;
  $("paneB").hidden = !b;
  $("outs").classList.toggle("single", !b);
  $("run").disabled = true;
  const jobs = [streamInto(a, $("outA"), $("statA"))];
  if (b) jobs.push(streamInto(b, $("outB"), $("statB")));
  Promise.all(jobs).then(() => { $("run").disabled = false; });
}

// ---- metrics ----
const HISTORY = 120;
const plots = { tps: [], queue: [], hits: [] };
let prev = null;

// Prometheus text: the sum over labels of each metric name's samples.
function parseProm(text) {
  const m = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const sp = line.lastIndexOf(" ");
    const name = line.slice(0, sp).split("{")[0];
    m[name] = (m[name] || 0) + parseFloat(line.slice(sp + 1));
  }
  return m;
}

function push(key, v) {
  plots[key].push(v);
  if (plots[key].length > HISTORY) plots[key].shift();
}

function draw(id, data, fixedMax, color) {
  const c = $(id), dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth * dpr, h = c.clientHeight * dpr;
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  c.dataset.points = String(data.length);
  if (!data.length) return;
  const max = fixedMax || Math.max(1, ...data) * 1.15, pad = 4 * dpr;
  const span = Math.min(HISTORY, Math.max(30, data.length)) - 1; // a short history fills less
  const x = (i) => w - (data.length - 1 - i) * (w / span);
  const y = (v) => h - pad - (v / max) * (h - 2 * pad);
  g.beginPath();
  data.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.strokeStyle = color; g.lineWidth = 1.5 * dpr; g.stroke();
  g.lineTo(x(data.length - 1), h); g.lineTo(x(0), h); g.closePath();
  g.globalAlpha = 0.12; g.fillStyle = color; g.fill(); g.globalAlpha = 1;
  g.fillStyle = "#6b7385"; g.font = `${10 * dpr}px system-ui`;
  g.fillText(fixedMax ? "100%" : max.toPrecision(2), 4 * dpr, 12 * dpr);
}

async function pollMetrics() {
  try {
    const r = await fetch("/metrics");
    if (!r.ok) throw new Error(`/metrics: HTTP ${r.status}`);
    const m = parseProm(await r.text()), t = performance.now() / 1000;
    const hits = m.peftd_adapter_slot_hits_total || 0, miss = m.peftd_adapter_slot_misses_total || 0;
    if (prev) {
      push("tps", Math.max(0, ((m.peftd_generated_tokens_total || 0) - prev.tok) / (t - prev.t)));
      push("queue", m.peftd_waiting_requests || 0);
      push("hits", hits + miss ? hits / (hits + miss) : 0);
      $("v-tps").textContent = plots.tps.at(-1).toFixed(1);
      $("v-queue").textContent = String(plots.queue.at(-1));
      $("v-run").textContent = String(m.peftd_running_requests || 0);
      $("v-hits").textContent = hits + miss ? `${(100 * hits / (hits + miss)).toFixed(0)}% of ${hits + miss}` : "–";
    }
    prev = { t, tok: m.peftd_generated_tokens_total || 0 };
    draw("plot-tps", plots.tps, 0, "#3b5bdb");
    draw("plot-queue", plots.queue, 0, "#e8590c");
    draw("plot-hits", plots.hits, 1, "#2b8a3e");
  } catch (e) { /* the next poll tries again */ }
  setTimeout(pollMetrics, 1000);
}

// ---- wiring ----
function init() {
  setKey(state.key);
  $("keyform").onsubmit = (e) => { e.preventDefault(); setKey($("keyin").value.trim()); $("keydlg").close(); banner(""); refresh(); };
  $("keycancel").onclick = () => $("keydlg").close();
  $("keybtn").onclick = () => { if (state.key) { setKey(""); location.reload(); } else askKey(""); };
  $("reload").onclick = refresh;
  $("files").onchange = (e) => pickFiles([...e.target.files]);
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = onDrop;
  $("upbtn").onclick = upload;
  $("run").onclick = run;
  $("modelB").onchange = () => { $("paneB").hidden = !$("modelB").value; $("outs").classList.toggle("single", !$("modelB").value); };
  $("outs").classList.add("single");
  refresh();
  pollMetrics();
}

init();
