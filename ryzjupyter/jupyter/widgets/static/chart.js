// ryzjupyter live throughput chart (anywidget ESM; no imports, works offline).
//
// Messages from the kernel (model.send on the Python side, "msg:custom" here):
//   {type: "reset", title?}                         a new generation starts
//   {type: "points", points: [[t, tok_s, phase], ...]}   phase: "prefill" | "decode"
//   {type: "done", summary: {...}}                  final numbers (tok/s, tokens, seconds)
// Synced traits: uid (keys the buffer shared by initialize and render), points (the whole
// series, set at the end so a re-rendered view shows the final figure), summary, title, height.

const STORES = new Map();   // uid -> {points, summary, title, views:Set}

function storeFor(model) {
  const uid = model.get("uid");
  let s = STORES.get(uid);
  if (!s) {
    s = { uid, points: (model.get("points") || []).slice(), summary: model.get("summary") || {},
          title: model.get("title") || "", views: new Set(), messages: 0 };
    STORES.set(uid, s);
  }
  return s;
}

function redrawAll(s) {
  for (const v of s.views) v.schedule();
}

function initialize({ model }) {
  // Runs when the model is created, before any view: messages sent right after display()
  // are kept here, so no point is lost.
  const s = storeFor(model);
  const onMsg = (msg) => {
    if (!msg || typeof msg !== "object") return;
    s.messages += 1;
    if (msg.type === "reset") {
      s.points = []; s.summary = {}; if (msg.title !== undefined) s.title = msg.title;
    } else if (msg.type === "points" && Array.isArray(msg.points)) {
      for (const p of msg.points) if (Array.isArray(p) && p.length >= 2) s.points.push(p);
    } else if (msg.type === "done") {
      s.summary = msg.summary || {};
    }
    redrawAll(s);
  };
  const onPoints = () => { s.points = (model.get("points") || []).slice(); redrawAll(s); };
  const onSummary = () => { s.summary = model.get("summary") || {}; redrawAll(s); };
  const onTitle = () => { s.title = model.get("title") || ""; redrawAll(s); };
  model.on("msg:custom", onMsg);
  model.on("change:points", onPoints);
  model.on("change:summary", onSummary);
  model.on("change:title", onTitle);
  return () => {
    model.off("msg:custom", onMsg);
    model.off("change:points", onPoints);
    model.off("change:summary", onSummary);
    model.off("change:title", onTitle);
    STORES.delete(model.get("uid"));
  };
}

// number formats: the same rules as ryzjupyter/jupyter/units.py (tests run both on the same values)
function fmtRate(v) {
  // three significant digits, no exponent: 2500, 40.0, 1.25, 0.042 (never "0.00" for a rate > 0)
  if (!isFinite(v)) return "-";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(Math.min(12, 1 - Math.floor(Math.log10(a))));
}

function fmtDuration(s) {
  // under a second in ms (38 ms, 2.5 ms; 400 µs below one), under a minute in s (2.35 s, 12.3 s)
  if (!isFinite(s)) return "-";
  if (s < 0) return "-" + fmtDuration(-s);
  const ms = s * 1e3;
  if (ms === 0) return "0 ms";
  if (ms < 0.9995) return (ms * 1e3).toFixed(0) + " \u00b5s";
  if (ms < 9.95) return ms.toFixed(1).replace(/\.0$/, "") + " ms";
  if (ms < 999.5) return ms.toFixed(0) + " ms";
  if (s < 9.995) return s.toFixed(2) + " s";
  if (s < 59.95) return s.toFixed(1) + " s";
  const r = Math.round(s);
  return Math.floor(r / 60) + " min " + String(r % 60).padStart(2, "0") + " s";
}

function rateAxis(vmax) {
  // [top, step]: 3-5 intervals of 1, 2, 2.5 or 5 x 10^k tok/s, the top at or above vmax
  const v = vmax > 0 && isFinite(vmax) ? vmax : 1;
  const raw = v / 4;
  const e = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * e;
  for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= raw * (1 - 1e-9)) { step = m * e; break; }
  const n = Math.max(1, Math.ceil(v / step - 1e-9));
  return [n * step, step];
}

function rateLabel(v, step, unit = "tok/s") {
  // a tick label with the digits the step needs and the unit: 0, 0.25 tok/s, 750 tok/s, 1.5k tok/s
  if (Math.abs(v) < step * 1e-6) return "0";
  const k = Math.abs(step) >= 1000 || Math.abs(v) >= 1000;
  if (k) { v /= 1000; step /= 1000; }
  let decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  if (Math.round(step * Math.pow(10, decimals) * 1e6) % 1e6) decimals += 1;   // 2.5 x 10^k: one digit more
  let text = v.toFixed(decimals);
  if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");
  return text + (k ? "k" : "") + " " + unit;
}

function robustMax(vals) {
  // the largest value, or with 20+ values 1.25 x the 95th percentile when that is smaller
  if (!vals.length) return 0;
  const sorted = vals.slice().sort((a, b) => a - b);
  const top = sorted[sorted.length - 1];
  if (sorted.length < 20) return top;
  return Math.min(top, 1.25 * sorted[Math.floor(0.95 * (sorted.length - 1))]);
}

// time axis: ends just past the last point, 3-5 intervals of 1, 2, 2.5 or 5 x 10^k s (a 0.03 s reply
// fills the chart like a 30 s one); the same rule as chart.py's time_axis
function timeAxis(tLast) {
  const t = Math.max(tLast, 1e-4);
  const raw = t / 5;
  const e = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = 10 * e;
  for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= raw) { step = m * e; break; }
  const n = Math.ceil(t / step - 1e-9);
  return [n * step, step];
}

function timeLabel(t, end) {
  // milliseconds below one second, else seconds, with the digits the tick has (2.5 ms, 7.5 s)
  return end < 1 ? String(+(t * 1e3).toFixed(6)) + " ms" : String(+t.toFixed(6)) + " s";
}

function draw(view, s) {
  const { canvas, label, el } = view;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(200, el.clientWidth || 480);
  const h = view.height;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    canvas.style.width = w + "px"; canvas.style.height = h + "px";
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const style = getComputedStyle(el);
  const fg = style.getPropertyValue("--jp-ui-font-color1").trim() || "#333";
  const muted = style.getPropertyValue("--jp-ui-font-color2").trim() || "#888";
  const grid = style.getPropertyValue("--jp-border-color2").trim() || "#ddd";
  const line = style.getPropertyValue("--jp-brand-color1").trim() || "#1976d2";
  const pre = style.getPropertyValue("--jp-warn-color2").trim() || "#f5b041";

  const R = 8, T = 8, B = 20;
  const pts = s.points;
  const dec = pts.filter((p) => p[2] !== "prefill");
  const pf = pts.filter((p) => p[2] === "prefill");
  let tmax = 0, ymax = 0;
  for (const p of pts) tmax = Math.max(tmax, p[0]);
  ymax = robustMax(dec.map((p) => p[1]));          // spikes above the scale are drawn at the top
  if (!dec.length) for (const p of pf) ymax = Math.max(ymax, p[1]);
  const [tend, tstep] = timeAxis(tmax);
  tmax = tend;
  const [ytop, ystep] = rateAxis((ymax || 1) * 1.05);
  ymax = ytop;
  const nY = Math.round(ytop / ystep);
  const ylabels = [];
  for (let i = 0; i <= nY; i++) ylabels.push(rateLabel(i * ystep, ystep));
  ctx.font = "10px var(--jp-ui-font-family, sans-serif)";
  // the left margin fits the widest tick label ("1.25k tok/s")
  const L = Math.ceil(Math.min(90, Math.max(30, 8 + Math.max(...ylabels.map((t) => ctx.measureText(t).width)))));
  const pw = w - L - R, ph = h - T - B;
  const X = (t) => L + (t / tmax) * pw;
  const Y = (v) => T + ph - (Math.min(v, ymax) / ymax) * ph;

  ctx.lineWidth = 1;
  ctx.strokeStyle = grid; ctx.fillStyle = muted;
  ctx.textAlign = "right"; ctx.textBaseline = "middle";
  for (let i = 0; i <= nY; i++) {
    const y = Y(i * ystep);
    ctx.beginPath(); ctx.moveTo(L, y + 0.5); ctx.lineTo(L + pw, y + 0.5); ctx.stroke();
    ctx.fillText(ylabels[i], L - 4, y);
  }
  ctx.textAlign = "center"; ctx.textBaseline = "top";
  const nTicks = Math.round(tmax / tstep);
  for (let i = 0; i <= nTicks; i++) {
    const t = i * tstep;
    ctx.textAlign = i === nTicks ? "right" : "center";     // the last label stays inside the canvas
    ctx.fillText(timeLabel(t, tmax), X(t), T + ph + 4);
  }

  // prefill: a shaded band from 0 to the end of the prompt pass, its speed written on it
  if (pf.length) {
    const p = pf[pf.length - 1];
    ctx.globalAlpha = 0.25; ctx.fillStyle = pre;
    ctx.fillRect(X(0), T, Math.max(2, X(p[0]) - X(0)), ph);
    ctx.globalAlpha = 1; ctx.fillStyle = fg; ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText("prefill " + fmtRate(p[1]) + " tok/s", X(0) + 3, T + 2);
  }
  // decode: the tokens/s line
  if (dec.length) {
    ctx.strokeStyle = line; ctx.lineWidth = 1.5; ctx.beginPath();
    dec.forEach((p, i) => { const x = X(p[0]), y = Y(p[1]); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    ctx.stroke();
    ctx.fillStyle = line;
    if (dec.length < 80) for (const p of dec) { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 1.8, 0, 2 * Math.PI); ctx.fill(); }
  }
  const sm = s.summary || {};
  let text = s.title ? s.title + " \u00b7 " : "";
  if (sm.n_generated !== undefined) {
    // what is drawn; the numbers are in the stats footer under the reply
    text += "tokens/s while the reply was written" + (pf.length ? " (shaded: the prompt pass)" : "");
    if (sm.drafter) {
      // speculative decoding: how many drafts the target kept and where the time went
      const d = (v) => fmtDuration(v || 0);
      text += ` \u00b7 draft ${sm.drafter}: ${Math.round((sm.acceptance || 0) * 100)}% accepted, ` +
        `${(sm.tokens_per_pass || 0).toFixed(2)} tokens/pass (draft ${d(sm.draft_s)}, ` +
        `verify ${d(sm.verify_s)}, sampling ${d(sm.sampling_s)})`;
    }
  } else if (dec.length) {
    text += `generating\u2026 ${fmtRate(dec[dec.length - 1][1])} tok/s`;
  } else {
    text += pts.length ? "prefill\u2026" : "waiting for tokens\u2026";
  }
  label.textContent = text;
  el.dataset.points = String(pts.length);
  el.dataset.decodePoints = String(dec.length);
  el.dataset.done = sm.n_generated !== undefined ? "1" : "0";
  view.frames += 1;
  el.dataset.frames = String(view.frames);
  // test hook: when a page sets globalThis.__ryz_charts = {}, record what each chart drew
  // (frames, points, and a PNG of the last frame with a decode line); off otherwise
  const dbg = globalThis.__ryz_charts;
  if (dbg && typeof dbg === "object") {
    const e = dbg[s.uid] || (dbg[s.uid] = { frames: 0, maxPoints: 0, maxDecode: 0, done: false });
    e.frames += 1;
    e.maxPoints = Math.max(e.maxPoints, pts.length);
    e.maxDecode = Math.max(e.maxDecode, dec.length);
    e.done = e.done || sm.n_generated !== undefined;
    e.yTicks = ylabels; e.tEnd = tmax; e.tLast = pts.length ? Math.max(...pts.map((p) => p[0])) : 0; e.caption = text;
    if (dec.length >= 2) e.png = canvas.toDataURL("image/png");
  }
}

function render({ model, el }) {
  const s = storeFor(model);
  el.classList.add("ryz-chart");
  const canvas = document.createElement("canvas");
  canvas.className = "ryz-chart-canvas";
  const label = document.createElement("div");
  label.className = "ryz-chart-label";
  el.appendChild(canvas);
  el.appendChild(label);
  let pending = false;
  const view = {
    canvas, label, el, frames: 0, height: model.get("height") || 160,
    schedule() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; draw(view, s); });
    },
  };
  const onHeight = () => { view.height = model.get("height") || 160; view.schedule(); };
  model.on("change:height", onHeight);
  s.views.add(view);
  const ro = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => view.schedule()) : null;
  if (ro) ro.observe(el);
  view.schedule();
  return () => {
    s.views.delete(view);
    model.off("change:height", onHeight);
    if (ro) ro.disconnect();
  };
}

// the formatting rules, for the tests (anywidget uses the default export)
export { fmtRate, fmtDuration, rateAxis, rateLabel, timeAxis, timeLabel };
export default { initialize, render };
