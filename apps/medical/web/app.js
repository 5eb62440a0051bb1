// The radiology page: a CT study and/or report -> POST v1/studies:analyze; the answer's heat-map
// slices, Secondary Capture and Structured Report are fetched with the API key (img and a elements
// cannot send it).
// Recent studies (GET v1/studies) open a stored result (GET v1/studies/{id}) in the same view.
// Admins also see the audit trail (GET v1/audit) and may erase the result shown (DELETE v1/studies/{id});
// GET v1/me says whether the key is an admin's.
"use strict";

const { $, headers, keyMissing, el, setStatus, errorText, fetchBlobUrl, bar, pct } = triptych;  // common.js
const BASE = triptych.base();  // ".../medical/"
let objectUrls = [];
let shownId = null;  // the stored result in the view (every analysis is stored)
let mayErase = false;  // the caller's role may erase (learnt from the audit trail's answer)
let auditRequest = 0;  // the latest audit load: an older answer arriving late is dropped
// The result area belongs to one study at a time: each analysis or opening starts a new view, which
// aborts the one before; whatever still arrives for an older view (its study, its heat maps) is dropped,
// so one study's images or links never land under another's.
let view = { abort: new AbortController() };

async function analyse(event) {
  event.preventDefault();
  const file = $("ct").files[0];
  const report = $("report").value;
  if (!file && !report.trim()) {
    setStatus("study-status", "Choose a CT file or type the report.", true);
    return;
  }
  const form = new FormData();
  if (file) form.append("ct", file);
  if (report.trim()) form.append("report", report);
  $("analyse-button").disabled = true;
  const v = clearStudy();
  const started = performance.now();
  setStatus("study-status", file ? "Uploading and analysing…" : "Analysing…");
  try {
    const response = await fetch(BASE + "v1/studies:analyze", { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    if (v === view) {  // else another study was opened meanwhile: this one is in the list, not in the view
      const failed = await show(result, v);
      if (v === view) {
        setStatus("study-status", `Done in ${((performance.now() - started) / 1000).toFixed(1)} s` + notLoaded(failed),
          failed > 0);
      }
    }
    recent();  // the new study at the top of the list
  } catch (err) {
    if (v === view) setStatus("study-status", err.message, true);
  } finally {
    $("analyse-button").disabled = false;
  }
}

// What a study without a location had: the answer says whether a CT was sent (results from before it
// did: a CT that was sent has a fusion weight)
function ctSent(r) {
  return r.inputs ? r.inputs.ct : (r.modality_weights.ct || 0) > 0;
}

// Study ``r`` in the result area, for view ``v``: everything but the heat maps first, its download links
// included, then the heat maps, each in its place (a failed one says so there). Resolves to how many
// heat maps failed; anything for ``v`` once it is no longer the view is dropped.
async function show(r, v) {
  if (v !== view) return 0;
  shownId = r.id;
  cancelErase();
  offerErase();
  $("study-result").hidden = false;
  $("probability").textContent = pct(r.probability);
  $("band").textContent = `${r.risk.band} risk · ${r.risk.meaning}`;
  $("band").className = `band ${r.risk.band}`;
  $("band-note").textContent = r.risk.note;
  const withoutLocation = ctSent(r) ? "no nodule candidate found in the CT" : "no CT sent";
  $("location").textContent = r.location ? r.location.description : withoutLocation;

  const weights = $("weights");
  weights.replaceChildren();
  for (const [modality, w] of Object.entries(r.modality_weights)) {
    const evidence = r.modality_evidence && modality in r.modality_evidence
      ? ` · evidence ${r.modality_evidence[modality] >= 0 ? "+" : ""}${r.modality_evidence[modality].toFixed(2)}` : "";
    weights.append(bar(modality === "ct" ? "CT" : modality, w, { note: evidence }));
  }
  $("record").textContent = `result ${r.id} · model ${r.model_version}`
    + (ANSWERED_BY[r.answered_by] ? ` · ${ANSWERED_BY[r.answered_by]}` : "")
    + (r.source_study_uid ? " · the DICOM downloads file with the uploaded study" : "");
  $("disclaimer").textContent = r.disclaimer;
  offerDownload($("capture"), r.secondary_capture, "secondary-capture.zip");
  offerDownload($("structured-report"), r.structured_report, `report-${r.id}.dcm`);

  $("findings").tBodies[0].replaceChildren(...r.findings.map((f) => {
    const tr = document.createElement("tr");
    const where = f.position_mm ? f.position_mm.map((v) => v.toFixed(1)).join(", ") : `voxel ${f.voxel_zyx.join(", ")}`;
    tr.append(el("td", where), el("td", `${f.diameter_mm.toFixed(1)} mm`), el("td", pct(f.influence)),
      el("td", f.nodule_probability === null ? "—" : pct(f.nodule_probability)),
      el("td", f.malignancy_score === null ? "—" : f.malignancy_score.toFixed(2)));
    return tr;
  }));
  if (!r.findings.length) {
    const tr = document.createElement("tr");
    const td = el("td", r.location ? "no candidate moved the decision" : withoutLocation, "muted");
    td.colSpan = 5;
    tr.append(td);
    $("findings").tBodies[0].append(tr);
  }

  // every slice's place first (in order), then its image as it arrives
  const strip = $("heatmaps");
  strip.replaceChildren();
  if (!r.heatmaps.length) strip.append(el("p", `no heat map: ${withoutLocation}`, "muted"));
  const loads = r.heatmaps.map((url, i) => {
    const figure = el("figure");
    const slot = el("p", "loading the heat map…", "muted small");
    const slice = (url.match(/slice_(\d+)\.png$/) || [])[1];
    const z = r.heatmap_z_mm ? ` · z ${r.heatmap_z_mm[i].toFixed(1)} mm` : "";
    figure.append(slot, el("figcaption", slice === undefined ? "" : `axial slice ${slice}${z} · patient's right on the left`));
    strip.append(figure);
    return heatmap(url, v).then((src) => {
      if (v !== view) return true;
      const img = el("img");
      img.src = src;
      img.alt = "axial slice with the explanation overlay";
      slot.replaceWith(img);
      return true;
    }, (err) => {
      if (v !== view) return true;
      slot.textContent = `heat map not loaded: ${err.message}`;
      slot.className = "error small";
      return false;
    });
  });
  return (await Promise.all(loads)).filter((ok) => !ok).length;
}

// a heat-map PNG of view ``v`` as an object URL (fetched with the key; aborted with the view)
async function heatmap(url, v) {
  const response = await fetch(url, { headers: headers(), signal: v.abort.signal });
  if (!response.ok) throw new Error(await errorText(response));
  const blob = await response.blob();
  if (v !== view) return null;  // dropped: no object URL made for it
  const src = URL.createObjectURL(blob);
  objectUrls.push(src);
  return src;
}

const notLoaded = (failed) => failed ? ` · ${failed} heat map${failed === 1 ? "" : "s"} not loaded` : "";

// a study sent with one input is answered by that input's dedicated model when the service has one
const ANSWERED_BY = {
  ct_only: "the CT-only model answered (no report was sent)",
  report_only: "the report-only model answered (no CT was sent)",
};

// a protected file behind a link: fetched with the API key when clicked, saved under ``filename``
function offerDownload(link, url, filename) {
  link.hidden = !url;
  link.onclick = !url ? null : async (event) => {
    event.preventDefault();
    try {
      const blob = await fetchBlobUrl(url);
      objectUrls.push(blob);
      const a = el("a");
      a.href = blob;
      a.download = filename;
      a.click();
    } catch (err) {
      setStatus("study-status", err.message, true);
    }
  };
}

// ---- recent studies ----------------------------------------------------------------------------

// beside a band shown without the result card's note (the worklist, the audit trail)
const BAND_NOTE = "model risk band (BTS 2015 probability cut-offs on its calibrated output), not a Lung-RADS category";

async function recent() {
  setStatus("recent-status", "Loading…");
  try {
    const band = $("band-filter").value;
    const sent = headers();
    const response = await fetch(BASE + "v1/studies" + (band ? `?band=${band}` : ""), { headers: sent });
    if (!response.ok) $("studies").tBodies[0].replaceChildren();  // no other key's studies left on show
    if (keyMissing(response, sent)) {  // the page has just opened and no key was typed yet: not an error
      setStatus("recent-status", "Enter the API key to see the recent studies.");
      return;
    }
    if (!response.ok) throw new Error(await errorText(response));
    const { results } = await response.json();
    $("studies").tBodies[0].replaceChildren(...results.map((s) => {
      const tr = document.createElement("tr");
      const sent = [s.ct && "CT", s.report && "report"].filter(Boolean).join(" + ");
      const band = el("td");
      band.append(el("span", s.band, `band ${s.band}`));
      band.title = BAND_NOTE;
      tr.append(el("td", s.created_at ? new Date(s.created_at).toLocaleString() : ""), el("td", pct(s.probability)),
        band, el("td", sent), el("td", s.ct ? s.findings : "—"), el("td", s.model_version, "muted small"));
      tr.tabIndex = 0;  // rows open with the keyboard too
      tr.title = `open result ${s.id}`;
      tr.addEventListener("click", () => openStudy(s.id));
      tr.addEventListener("keydown", (event) => { if (event.key === "Enter") openStudy(s.id); });
      return tr;
    }));
    setStatus("recent-status", `${results.length} stud${results.length === 1 ? "y" : "ies"}`);
  } catch (err) {
    setStatus("recent-status", err.message, true);
  }
}

async function openStudy(id) {
  const v = clearStudy();  // the study shown before goes first: a failed opening leaves nothing of it on screen
  setStatus("study-status", "Opening the stored result…");
  try {
    const response = await fetch(`${BASE}v1/studies/${encodeURIComponent(id)}`, { headers: headers(), signal: v.abort.signal });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    if (v !== view) return;
    const shown = show(result, v);
    $("study-result").scrollIntoView();
    const failed = await shown;
    if (v === view) setStatus("study-status", `Stored result ${id}` + notLoaded(failed), failed > 0);
  } catch (err) {
    if (v === view) setStatus("study-status", `Result ${id} not opened: ${err.message}`, true);
  }
}

// ---- erasure (admin) ----------------------------------------------------------------------------
// DELETE v1/studies/{id} removes the stored analysis and its heat maps (their links answer 404 after).

function offerErase() {
  $("erase-box").hidden = !(mayErase && shownId);
  if ($("erase-box").hidden) cancelErase();
}

function askErase() {
  $("erase-id").textContent = shownId;
  $("erase-confirm").hidden = false;
  $("erase").disabled = true;
  $("erase-no").focus();  // the safe choice first
}

function cancelErase() {
  $("erase-confirm").hidden = true;
  $("erase").disabled = false;
}

// An empty, hidden result area and a new view for what comes next (the view before is aborted)
function clearStudy() {
  view.abort.abort();
  view = { abort: new AbortController() };
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = [];
  shownId = null;
  offerErase();
  $("study-result").hidden = true;
  $("heatmaps").replaceChildren();
  $("findings").tBodies[0].replaceChildren();
  offerDownload($("capture"), null, "");
  offerDownload($("structured-report"), null, "");
  return view;
}

async function erase() {
  const id = shownId;
  if (!id) return;
  $("erase-yes").disabled = true;
  setStatus("study-status", `Erasing result ${id}…`);
  try {
    const response = await fetch(`${BASE}v1/studies/${encodeURIComponent(id)}`, { method: "DELETE", headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    if (shownId === id) clearStudy();
    setStatus("study-status", `Erased result ${id} and its heat maps`);
    recent();
    audit();  // the erasure is in the trail
  } catch (err) {
    setStatus("study-status", `Not erased: ${err.message}`, true);
  } finally {
    $("erase-yes").disabled = false;
  }
}

// ---- audit trail (admin) ------------------------------------------------------------------------
// GET v1/audit and DELETE v1/studies/{id} need the same role (admin; anyone with API keys off): GET v1/me
// says whether the key has it, and so whether the trail is loaded and erasure offered. The records name
// studies by keyed hash only.

function outcomeText(outcome) {
  return Object.entries(outcome || {}).map(([key, value]) => {
    const name = key.replace(/_/g, " ");
    if (key === "probability" && typeof value === "number") return `probability ${pct(value)}`;
    if (typeof value === "boolean") return `${name}: ${value ? "yes" : "no"}`;
    if (value === null) return `${name}: —`;
    return `${name} ${typeof value === "object" ? JSON.stringify(value) : value}`;
  }).join(" · ");
}

async function audit() {
  const request = ++auditRequest;
  const table = $("audit-records");
  setStatus("audit-status", "Loading…");
  try {
    // the key's role first (GET v1/me): a page that is not an admin's does not ask for the trail at all
    const sentToMe = headers();
    const me = await fetch(`${BASE}v1/me`, { headers: sentToMe });
    if (request !== auditRequest) return;
    const who = me.ok ? await me.json() : null;
    mayErase = who !== null && (who.role === "admin" || !who.authenticated);  // keys off: every route open
    offerErase();
    if (!mayErase) {
      table.hidden = true;
      table.tBodies[0].replaceChildren();
      if (me.ok || keyMissing(me, sentToMe) || me.status === 403) {
        setStatus("audit-status", me.status === 401 ? "Enter the API key to see the audit trail."
          : "Not allowed: only the admin role may read the audit trail and erase studies; this API key is not an admin's.");
        return;
      }
      throw new Error(await errorText(me));
    }
    const query = new URLSearchParams({ limit: $("audit-limit").value });
    if ($("audit-action").value) query.set("action", $("audit-action").value);
    const response = await fetch(`${BASE}v1/audit?${query}`, { headers: headers() });
    if (request !== auditRequest) return;
    if (!response.ok) throw new Error(await errorText(response));
    const { records } = await response.json();
    if (request !== auditRequest) return;
    table.tBodies[0].replaceChildren(...records.map((r) => {
      const tr = document.createElement("tr");
      const subject = el("td");
      if (r.subject_hash) subject.append(el("code", r.subject_hash));
      else subject.append(el("span", "—", "muted"));
      const outcome = el("td", outcomeText(r.outcome), "small");
      if (r.outcome && "band" in r.outcome) outcome.title = `band: ${BAND_NOTE}`;
      tr.append(el("td", new Date(r.created_at).toLocaleString()), el("td", r.role === null ? "— (keys off)" : r.role),
        el("td", r.action), subject, el("td", r.model_version === null ? "—" : r.model_version, "muted small"),
        outcome);
      return tr;
    }));
    table.hidden = false;
    setStatus("audit-status", `${records.length} record${records.length === 1 ? "" : "s"}`);
  } catch (err) {
    if (request !== auditRequest) return;
    mayErase = false;
    offerErase();
    table.hidden = true;
    setStatus("audit-status", err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("study-form").addEventListener("submit", analyse);
  $("refresh").addEventListener("click", recent);
  $("band-filter").addEventListener("change", recent);
  $("api-key").addEventListener("change", () => { recent(); audit(); });
  $("erase").addEventListener("click", askErase);
  $("erase-no").addEventListener("click", cancelErase);
  $("erase-yes").addEventListener("click", erase);
  $("audit-refresh").addEventListener("click", audit);
  $("audit-action").addEventListener("change", audit);
  $("audit-limit").addEventListener("change", audit);
  recent();
  audit();
});
