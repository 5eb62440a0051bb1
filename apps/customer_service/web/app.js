// The contact centre's page: analyse a recording (POST v1/calls:analyze as a background job, then
// GET v1/results/{id}), the recent calls (GET v1/results), the calls in numbers (GET v1/results:summary)
// and live transcription (WebSocket v1/stream). Everything shown is set with textContent: transcripts are never parsed as HTML.
"use strict";

const { $, apiKey, headers, keyMissing, el, setStatus, errorText, showPeriod, savePeriod, bar, sleep, pct } = triptych;  // common.js
const BASE = triptych.base();  // ".../customer-service/"
const EMOTIONS = ["angry", "frustrated", "anxious", "neutral", "satisfied"];
const clock = (s) => (s === null || s === undefined ? "" : `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}`);

// ---- analyse a recording -----------------------------------------------------------------------

async function analyse(event) {
  event.preventDefault();
  const form = new FormData();
  const file = $("audio").files[0];
  const text = $("text").value;
  if (!file && !text.trim()) {
    setStatus("call-status", "Choose a recording or type some text.", true);
    return;
  }
  if (file) form.append("audio", file);
  if (text.trim()) form.append("text", text);
  if ($("output-mode").value) form.append("output_mode", $("output-mode").value);
  if (file && $("redact-audio").checked) form.append("redact_audio", "true");
  $("analyse-button").disabled = true;
  $("call-result").hidden = true;
  const started = performance.now();
  try {
    setStatus("call-status", "Uploading…");
    // a long recording takes minutes to decode: ask for a background job and poll its result
    const response = await fetch(BASE + "v1/calls:analyze",
      { method: "POST", body: form, headers: headers({ Prefer: "respond-async" }) });
    let analysis;
    if (response.status === 202) {
      const job = await response.json();
      analysis = await poll(job, started);
    } else if (response.ok) {
      analysis = await response.json();
    } else {
      throw new Error(await errorText(response));
    }
    if (!analysis) return;
    show(analysis);
    setStatus("call-status", `Done in ${((performance.now() - started) / 1000).toFixed(1)} s · result ${analysis.id}`);
    recent();  // the new call at the top of the list
    summary();
  } catch (err) {
    setStatus("call-status", err.message, true);
  } finally {
    $("analyse-button").disabled = false;
  }
}

// The redacted recording on show: its object URL (given back when another call is shown) and a counter that
// makes a fetch still under way for an earlier call drop its answer instead of showing it under a later one.
const redacted = { url: null, shown: 0 };

function clearRedacted(note = "") {
  // nothing of the previous call's recording is left on show, nor kept in memory
  if (redacted.url) URL.revokeObjectURL(redacted.url);
  redacted.url = null;
  $("redacted-audio").removeAttribute("src");
  $("redacted-audio").load();  // drops the media already loaded from the old URL
  $("redacted-audio").hidden = true;
  $("redacted-download").removeAttribute("href");
  $("redacted-download").hidden = true;
  $("redacted-note").textContent = note;
}

async function redactedRecording(r) {
  // fetched with the page's key (an <audio src> could not send it), then played from memory
  const shown = ++redacted.shown;
  clearRedacted(r ? "Fetching…" : "");
  $("redacted-card").hidden = !r;
  if (!r) return;
  let url;
  try {
    const response = await fetch(r.url, { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const blob = await response.blob();
    if (shown !== redacted.shown) return;  // another call is on show by now
    url = URL.createObjectURL(blob);
  } catch (err) {
    if (shown === redacted.shown) clearRedacted(err.message);
    return;
  }
  redacted.url = url;
  $("redacted-audio").src = url;
  $("redacted-audio").hidden = false;
  $("redacted-download").href = url;
  $("redacted-download").hidden = false;
  $("redacted-note").textContent = `${r.silenced_s.toFixed(1)} s silenced of ${r.seconds.toFixed(1)} s`;
}

// Waits before polling a job again after the network failed (a fetch that threw, or a gateway's 502-504):
// the job runs on in the service whatever the page sees, so a dropped connection is retried, not the end.
const POLL_RETRIES_S = [1, 2, 4, 8];
const TRANSIENT = new Set([502, 503, 504]);

async function poll(job, started) {
  let failures = 0;
  for (;;) {
    await sleep(failures ? POLL_RETRIES_S[failures - 1] * 1000 : 1000);
    const took = `${((performance.now() - started) / 1000).toFixed(0)} s`;
    setStatus("call-status", failures ? `Analysing… ${took} (connection lost, retrying)` : `Analysing… ${took}`);
    let response;
    try {
      response = await fetch(job.result_url, { headers: headers() });
      if (TRANSIENT.has(response.status)) throw new Error(await errorText(response));
    } catch (err) {
      if (++failures > POLL_RETRIES_S.length) {
        throw new Error(`Lost contact with the service (${err.message}); the analysis goes on there: `
          + `job ${job.id} is still running. Its result will be listed under Recent calls.`);
      }
      continue;
    }
    failures = 0;
    if (response.status === 202) continue;
    if (!response.ok) throw new Error(await errorText(response));
    const row = await response.json();
    const payload = row.payload || {};
    if (payload.status === "done") return { ...payload, id: row.id };
    throw new Error(payload.error ? payload.error.message : `the job ended as ${payload.status}`);
  }
}

function show(a) {
  $("call-result").hidden = false;
  const esc = $("escalation");
  esc.className = "banner " + (a.escalation.escalate ? "escalate" : "calm");
  esc.textContent = a.escalation.escalate
    ? "Escalate: " + a.escalation.reasons.join("; ")
    : "No escalation";

  $("intent").textContent = a.intent ? `${a.intent.label.replaceAll("_", " ")} · ${pct(a.intent.confidence)}` : "—";
  const top = $("intent-top");
  top.replaceChildren(...(a.intent ? a.intent.top.slice(1, 4) : [])
    .map((c) => el("li", `${c.label.replaceAll("_", " ")} ${pct(c.confidence)}`)));
  // a call that asked for more than one thing lists each, in the order the caller asked
  const requests = a.requests || [];
  $("requests-box").hidden = requests.length < 2;
  $("requests").replaceChildren(...requests.map((r) => el("li", `${r.label.replaceAll("_", " ")} ${pct(r.confidence)}`)));

  $("call-emotion").textContent = a.emotion ? a.emotion.label : "—";
  const bars = $("emotion-bars");
  bars.replaceChildren();
  if (a.emotion) {
    for (const [label, p] of Object.entries(a.emotion.probabilities).sort((x, y) => y[1] - x[1])) {
      bars.append(bar(label, p, { cls: `e-${EMOTIONS.includes(label) ? label : "none"}` }));
    }
  }

  $("reply-text").textContent = a.reply.text;
  const audio = $("reply-audio");
  audio.hidden = !a.reply.audio_wav_base64;
  if (audio.src.startsWith("blob:")) URL.revokeObjectURL(audio.src);  // the previous call's reply
  audio.removeAttribute("src");
  if (a.reply.audio_wav_base64) {
    const bytes = Uint8Array.from(atob(a.reply.audio_wav_base64), (c) => c.charCodeAt(0));
    audio.src = URL.createObjectURL(new Blob([bytes], { type: "audio/wav" }));
  }
  $("reply-note").textContent = a.reply.voice_unavailable ? `voice unavailable: ${a.reply.voice_unavailable}` : "";
  redactedRecording(a.redacted_audio);
  const warnings = a.warnings || [];
  $("call-warnings").hidden = !warnings.length;
  $("call-warnings").textContent = warnings.map((w) => `Note: ${w}.`).join(" ");

  timeline(a.segments, a.transcript.duration_s);
  const body = $("segments").tBodies[0];
  body.replaceChildren(...a.segments.map((s) => {
    const tr = document.createElement("tr");
    const weights = s.modality_weights || {};
    tr.append(
      el("td", s.start === null ? "" : `${clock(s.start)}–${clock(s.end)}`),
      el("td", s.speaker),
      redactedCell(written(s)),
      el("td", s.emotion || "—"),
      el("td", turnLabel(s)),
      el("td", s.asr_confidence.toFixed(2)),
      el("td", `${(weights.voice ?? 0).toFixed(2)} / ${(weights.text ?? 0).toFixed(2)}`),
    );
    return tr;
  }));
  $("meta").textContent = JSON.stringify({ model_versions: a.model_versions, timings_ms: a.timings_ms }, null, 1);
}

function turnLabel(s) {
  // what the caller's turn did: its intent when it asked for something, else its dialogue acts
  if (s.intent) return `${s.intent.label.replaceAll("_", " ")} ${pct(s.intent.confidence)}`;
  return (s.acts || []).map((a) => a.replaceAll("_", " ")).join(", ");
}

function written(s) {
  // what is shown of a segment or a final: its written form ("£12.50"), or its words for a call stored before it had one
  return s.normalised ?? s.text;
}

function redactedCell(text) {
  // placeholders such as [CARD] or [IBAN] are highlighted; the rest stays plain text
  const td = document.createElement("td");
  for (const part of text.split(/(\[[A-Z_]+\])/)) {
    if (part) td.append(/^\[[A-Z_]+\]$/.test(part) ? el("span", part, "pii") : document.createTextNode(part));
  }
  return td;
}

function timeline(segments, duration) {
  const strip = $("timeline");
  strip.replaceChildren();
  const timed = segments.filter((s) => s.start !== null && s.end !== null);
  const total = duration || timed.reduce((m, s) => Math.max(m, s.end), 0) || 1;
  let t = 0;
  for (const s of timed) {
    if (s.start > t) strip.append(block(s.start - t, total, "e-none", "silence"));
    strip.append(block(s.end - s.start, total, `e-${EMOTIONS.includes(s.emotion) ? s.emotion : "none"}`,
      `${clock(s.start)} ${s.speaker}: ${s.emotion || "no emotion"} — ${written(s)}`));
    t = Math.max(t, s.end);
  }
  if (timed.length && total > t) strip.append(block(total - t, total, "e-none", "silence"));
  if (!timed.length) strip.append(block(1, 1, "e-none", "typed text: no timing"));
  $("legend").replaceChildren(...EMOTIONS.map((e) => {
    const item = el("span", e);
    item.prepend(el("i", null, `e-${e}`));
    return item;
  }));
}

function block(seconds, total, cls, title) {
  const div = el("div", null, cls);
  div.style.flexGrow = String(Math.max(seconds, 0.01) / total);
  div.title = title;
  return div;
}

// ---- recent calls ------------------------------------------------------------------------------

async function recent() {
  setStatus("recent-status", "Loading…");
  try {
    const query = $("escalated-only").checked ? "?limit=200&escalated=true" : "?limit=50";
    const sent = headers();
    const response = await fetch(BASE + "v1/results" + query, { headers: sent });
    if (!response.ok) $("calls").tBodies[0].replaceChildren();  // no other key's calls left on show
    if (keyMissing(response, sent)) {
      setStatus("recent-status", "Enter the API key to see the recent calls.");
      return;
    }
    if (!response.ok) throw new Error(await errorText(response));
    const { results } = await response.json();
    $("calls").tBodies[0].replaceChildren(...results.map((c) => {
      const tr = document.createElement("tr");
      tr.className = c.escalate ? "flagged" : "";
      tr.title = c.reasons.join("; ");
      tr.append(el("td", c.created_at ? new Date(c.created_at).toLocaleString() : ""), el("td", c.status),
        el("td", c.escalate === null ? "" : (c.escalate ? "yes" : "no")), el("td", (c.intent || "").replaceAll("_", " ")),
        el("td", c.emotion || ""),
        el("td", (c.duration_s ? `${c.duration_s.toFixed(0)} s` : "") + (c.source === "stream" ? " · live" : "")),
        redactedCell(c.preview));
      if (c.status === "done") tr.addEventListener("click", () => openCall(c.id));
      return tr;
    }));
    setStatus("recent-status", `${results.length} call${results.length === 1 ? "" : "s"}`);
  } catch (err) {
    setStatus("recent-status", err.message, true);
  }
}

async function openCall(id) {
  try {
    const response = await fetch(`${BASE}v1/results/${encodeURIComponent(id)}`, { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const row = await response.json();
    show({ ...row.payload, id: row.id });
    setStatus("call-status", `Result ${row.id} (stored ${new Date(row.created_at).toLocaleString()})`);
    $("analyse").scrollIntoView();
  } catch (err) {
    setStatus("recent-status", err.message, true);
  }
}

// ---- live transcription ------------------------------------------------------------------------

let live = null;

async function startLive() {
  $("start").disabled = true;
  $("finals").replaceChildren();
  $("partial").textContent = "";
  $("live-escalation").hidden = true;
  $("live-call").hidden = true;
  const mode = $("stream-mode").value;
  const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}${BASE}v1/stream?mode=${encodeURIComponent(mode)}`;
  // made inside the click: browsers keep an AudioContext created outside a user gesture suspended
  // read: each final's line by its final_index, for its reading (which names it) to label
  const state = { ws: new WebSocket(url), latencies: [], ctx: new AudioContext(), mic: null, read: new Map() };
  live = state;
  state.ws.binaryType = "arraybuffer";
  state.ws.onopen = () => {
    const key = apiKey();
    if (key) state.ws.send(JSON.stringify({ type: "auth", key }));  // browsers cannot set WebSocket headers
    setStatus("stream-status", "Connecting…");
  };
  state.ws.onmessage = (m) => onStreamMessage(state, JSON.parse(m.data));
  state.ws.onerror = () => setStatus("stream-status", "The stream failed (is the service up?).", true);
  state.ws.onclose = () => { releaseMic(state); $("start").disabled = false; $("stop").disabled = true; };
}

async function onStreamMessage(state, msg) {
  if (msg.type === "ready") {
    try {
      await openMic(state);
      $("stop").disabled = false;
      setStatus("stream-status", "Listening…");
    } catch (err) {
      setStatus("stream-status", `Microphone: ${err.message}`, true);
      state.ws.close();
    }
  } else if (msg.type === "partial") {
    $("partial").textContent = msg.text;
    state.latencies.push(msg.latency_ms);
  } else if (msg.type === "final") {
    $("partial").textContent = "";
    const p = el("p");
    p.append(el("span", `${clock(msg.start)} `, "muted"));
    for (const node of redactedCell(written(msg)).childNodes) p.append(node.cloneNode(true));
    $("finals").append(p);
    state.read.set(msg.final_index, p);  // its reading names it: never counted (a failed reading is no segment)
  } else if (msg.type === "analysis" || msg.type === "summary") {
    showLiveCall(state, msg);
    if (msg.type === "summary" && msg.id) {  // stored like an analysed call: it joins the lists below
      recent();
      summary();
    }
  } else if (msg.type === "end") {
    const sorted = [...state.latencies].sort((a, b) => a - b);
    const p95 = sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(0.95 * sorted.length))] : 0;
    setStatus("stream-status", `Ended · ${msg.audio_s.toFixed(1)} s of audio · partial latency p95 ${p95.toFixed(0)} ms`);
  } else if (msg.type === "error") {
    setStatus("stream-status", msg.message, true);
  }
}

function showLiveCall(state, msg) {
  // a final's reading after its text, then the call so far: escalation, emotion, what was asked
  const p = msg.final_index === null || msg.final_index === undefined ? null : state.read.get(msg.final_index);
  if (p && msg.error) {  // this sentence was not read; the call goes on
    p.append(el("span", ` · ${msg.error}`, "error"));
  } else if (p && msg.segment) {
    const s = msg.segment;
    if (s.asr !== "stream") {  // written again by the service's own recogniser: its words replace the stream's
      p.replaceChildren(el("span", `${clock(s.start)} `, "muted"), ...redactedCell(written(s)).childNodes);
      p.title = `written again by ${s.asr}`;
    }
    p.append(el("span", ` · ${s.emotion || "no emotion"}${turnLabel(s) ? " · " + turnLabel(s) : ""}`, "muted"));
  } else if (msg.error) {
    setStatus("stream-status", msg.error, true);
  }
  if (!msg.escalation) return;
  const esc = $("live-escalation");
  esc.hidden = false;
  esc.className = "banner " + (msg.escalation.escalate ? "escalate" : "calm");
  esc.textContent = msg.escalation.escalate ? "Escalate: " + msg.escalation.reasons.join("; ") : "No escalation so far";
  $("live-call").hidden = false;
  $("live-emotion").textContent = msg.emotion ? msg.emotion.label : "—";
  const asked = (msg.requests || []).map((r) => r.label.replaceAll("_", " "));
  $("live-requests").textContent = asked.length ? asked.join(", ") : "nothing yet";
}

async function openMic(state) {
  state.mic = await navigator.mediaDevices.getUserMedia(
    { audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true } });
  await state.ctx.resume();
  await state.ctx.audioWorklet.addModule("pcm-worklet.js");
  const node = new AudioWorkletNode(state.ctx, "pcm-16k", { processorOptions: { chunkSamples: 2560 } });
  node.port.onmessage = (e) => { if (state.ws.readyState === WebSocket.OPEN) state.ws.send(e.data); };
  state.ctx.createMediaStreamSource(state.mic).connect(node);
  node.connect(state.ctx.destination);  // pulled by the graph; it outputs silence
}

function releaseMic(state) {
  if (state.mic) state.mic.getTracks().forEach((t) => t.stop());
  if (state.ctx) state.ctx.close();
  state.mic = null;
  state.ctx = null;
}

function stopLive() {
  $("stop").disabled = true;
  if (!live) return;
  releaseMic(live);
  if (live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "end" }));
  setStatus("stream-status", "Finishing…");
}

// ---- the calls in numbers (GET v1/results:summary) -----------------------------------------------

function summary() {
  return showPeriod(`${BASE}v1/results:summary`, "the calls' numbers", showSummary);
}

function shares(container, counts, total) {
  container.replaceChildren(...(total ? Object.entries(counts).map(([label, n]) => bar(label.replaceAll("_", " "), n / total, { note: ` · ${n}` }))
    : [el("p", "none", "muted")]));
}

function showSummary(s) {
  const done = s.statuses.done;
  $("summary-body").hidden = done === 0;
  const unfinished = s.calls - done;
  setStatus("summary-status", s.calls === 0 ? "No calls in this period."
    : `${s.calls} call${s.calls === 1 ? "" : "s"}` + (unfinished ? ` (${unfinished} not finished: running, failed or interrupted)` : "")
      + (s.complete ? "" : " · the newest only: too many to count"));
  if (done === 0) return;
  $("escalation-rate").textContent = `${pct(s.escalation_rate)} · ${s.escalated} of ${done}`;
  shares($("escalation-reasons"), s.escalation_reasons, s.escalated);
  shares($("summary-emotions"), s.caller_emotions, Object.values(s.caller_emotions).reduce((a, b) => a + b, 0));
  shares($("summary-intents"), Object.fromEntries(s.top_intents.map((i) => [i.intent, i.calls])), done);
  const redacted = Object.entries(s.redactions);
  $("summary-redactions").textContent = redacted.length ? redacted.map(([t, n]) => `${t} ${n}`).join(" · ") : "nothing";
  $("summary-audio").textContent = s.audio_calls
    ? `${s.audio_calls} recorded call${s.audio_calls === 1 ? "" : "s"} (${s.live_calls} live), ${s.audio_minutes.toFixed(1)} min, ${s.mean_call_seconds.toFixed(0)} s on average`
    : "typed chats only";
}

async function exportCsv(event) {
  event.preventDefault();
  try {
    await savePeriod(`${BASE}v1/results.csv`, Number($("period").value), `calls-last-${$("period").value}h.csv`);
  } catch (err) {
    setStatus("summary-status", err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("call-form").addEventListener("submit", analyse);
  $("export").addEventListener("click", exportCsv);
  $("summary-refresh").addEventListener("click", summary);
  $("period").addEventListener("change", summary);
  $("api-key").addEventListener("change", () => { summary(); recent(); });
  summary();
  recent();  // with the key kept for this tab, or none needed; else it asks for the key, as the numbers do
  $("refresh").addEventListener("click", recent);
  $("escalated-only").addEventListener("change", recent);
  $("start").addEventListener("click", startLive);
  $("stop").addEventListener("click", stopLive);
});
