// The board-inspection page: image (+ template, + vibration) -> POST v1/inspect; the defects are
// drawn over the uploaded image in a canvas (the image never comes back from the service). Below, the
// line in numbers over a period (GET v1/inspections:summary): pass rate, decisions, defect Pareto.
"use strict";

const { $, headers, el, setStatus, errorText, showPeriod, savePeriod, bar, pct } = triptych;  // common.js
const BASE = triptych.base();  // ".../industrial/"
// a listed defect the decision does not rest on (the template refutes it, or it is below the line's acceptable
// size): drawn dashed in this grey, its row muted
const LISTED_ONLY = "#9e9e9e";
const counts = (d) => !d.refuted_by_template && !d.below_min_size;
const COLOURS = { open: "#ff5252", short: "#ffb300", mousebite: "#40c4ff", spur: "#b388ff", copper: "#69f0ae", "pin-hole": "#ff80ab" };

async function inspect(event) {
  event.preventDefault();
  const image = $("image").files[0];
  const vibration = $("vibration").files[0];
  if (!image && !vibration) {
    setStatus("inspect-status", "Choose a board image and/or a vibration window.", true);
    return;
  }
  const form = new FormData();
  if (image) form.append("image", image);
  if ($("template").files[0]) form.append("template", $("template").files[0]);
  if (vibration) form.append("vibration", vibration);
  if ($("sample-rate").value) form.append("sample_rate", $("sample-rate").value);
  if ($("board-id").value.trim()) form.append("board_id", $("board-id").value.trim());
  $("inspect-button").disabled = true;
  $("inspect-result").hidden = true;
  const started = performance.now();
  setStatus("inspect-status", "Inspecting…");
  try {
    const response = await fetch(BASE + "v1/inspect", { method: "POST", body: form, headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    await show(result, image);
    setStatus("inspect-status", `Done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    summary();
  } catch (err) {
    setStatus("inspect-status", err.message, true);
  } finally {
    $("inspect-button").disabled = false;
  }
}

async function show(r, imageFile) {
  $("inspect-result").hidden = false;
  const decision = $("decision");
  decision.className = `banner ${r.decision}`;
  // the banner counts the defects the decision rests on; the listed others are named beside them
  const counting = r.defects.filter(counts).length;
  const refuted = r.defects.filter((d) => d.refuted_by_template).length;
  const small = r.defects.filter((d) => !d.refuted_by_template && d.below_min_size).length;
  const listedOnly = [refuted && `${refuted} refuted by template`, small && `${small} below size`].filter(Boolean);
  decision.textContent = `${r.decision.toUpperCase()} · ${counting} defect${counting === 1 ? "" : "s"}`
    + (listedOnly.length ? ` (${listedOnly.join(", ")})` : "")
    + (r.detector_input ? ` · detector input: ${r.detector_input}` : "");

  $("machine").textContent = r.machine_state ? r.machine_state.label.replaceAll("_", " ") : "no vibration sent";
  bars($("machine-bars"), r.machine_state ? r.machine_state.probabilities : {});
  bars($("weights"), r.modality_weights);
  $("fused").textContent = r.defect_probability === null ? "" : `P(board defective) = ${pct(r.defect_probability)}`;
  $("record").textContent = (r.board_id ? `board ${r.board_id} · ` : "") + `result ${r.id} · ${r.model_version} · ` +
    Object.entries(r.timings_ms).map(([k, v]) => `${k} ${v.toFixed(0)} ms`).join(", ");

  $("defects").tBodies[0].replaceChildren(...r.defects.map((d, i) => {
    const tr = document.createElement("tr");
    const name = el("td", d.class);
    name.style.borderLeft = counts(d) ? `4px solid ${COLOURS[d.class] || "#fff"}` : `4px dashed ${LISTED_ONLY}`;
    if (!counts(d)) tr.className = "listed-only";
    // why a listed defect did not fail the board, when it did not
    const note = d.refuted_by_template ? " · refuted by the template" : (d.below_min_size ? " · acceptable size" : "");
    tr.append(el("td", i + 1), name, el("td", pct(d.confidence)), el("td", `${d.size_mm.toFixed(2)} mm${note}`),
      el("td", d.box_px.map((v) => v.toFixed(0)).join(", ")));
    return tr;
  }));
  await draw(imageFile, r.defects);
}

function bars(container, probabilities) {
  container.replaceChildren(...Object.entries(probabilities).sort((a, b) => b[1] - a[1])
    .map(([label, p]) => bar(label.replaceAll("_", " "), p)));
}

async function draw(imageFile, defects) {
  const canvas = $("board");
  const ctx = canvas.getContext("2d");
  $("board-legend").hidden = true;
  if (!imageFile) {
    canvas.hidden = true;
    return;
  }
  canvas.hidden = false;
  let bitmap;
  try {
    // As the browser shows the file: a JPEG's EXIF orientation applied. The service reads it the same way
    // (service.decode_image), so box_px are in this bitmap's pixels.
    bitmap = await createImageBitmap(imageFile, { imageOrientation: "from-image" });
  } catch (_) {  // e.g. TIFF, which browsers do not decode: the table still lists the defects
    canvas.width = 640;
    canvas.height = 80;
    ctx.fillStyle = "#fff";
    ctx.font = "16px system-ui";
    ctx.fillText("This browser cannot show this image format.", 16, 45);
    return;
  }
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  ctx.drawImage(bitmap, 0, 0);
  const line = Math.max(2, bitmap.width / 320);
  ctx.lineWidth = line;
  ctx.font = `bold ${Math.round(9 * line)}px system-ui`;
  defects.forEach((d, i) => {
    const [x1, y1, x2, y2] = d.box_px;
    ctx.strokeStyle = ctx.fillStyle = counts(d) ? COLOURS[d.class] || "#fff" : LISTED_ONLY;
    ctx.setLineDash(counts(d) ? [] : [3 * line, 2 * line]);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillText(String(i + 1), x1, Math.max(12, y1 - 2 * line));
  });
  ctx.setLineDash([]);
  $("board-legend").hidden = defects.length === 0;
}

// ---- the line in numbers ----------------------------------------------------------------------
function summary() {
  return showPeriod(`${BASE}v1/inspections:summary`, "the line's numbers", showSummary);
}

function showSummary(s) {
  $("summary-body").hidden = s.inspections === 0;
  setStatus("summary-status", s.inspections === 0 ? "No inspections in this period."
    : `${s.inspections} inspection${s.inspections === 1 ? "" : "s"}` + (s.complete ? "" : " (the newest only: too many to count)"));
  if (s.inspections === 0) return;
  $("pass-rate").textContent = pct(s.pass_rate);
  $("summary-counts").textContent = `${s.boards_imaged} board image${s.boards_imaged === 1 ? "" : "s"}`
    + (s.refuted_by_template ? ` · ${s.refuted_by_template} detection${s.refuted_by_template === 1 ? "" : "s"} refuted by templates` : "");
  bars($("summary-decisions"), Object.fromEntries(Object.entries(s.decisions).map(([k, n]) => [k, n / s.inspections])));
  const states = Object.values(s.machine_states).reduce((a, b) => a + b, 0);
  $("summary-machine").replaceChildren(...(states ? [] : [el("p", "no vibration sent", "muted")]));
  if (states) bars($("summary-machine"), Object.fromEntries(Object.entries(s.machine_states).map(([k, n]) => [k, n / states])));
  $("pareto").tBodies[0].replaceChildren(...(s.defect_classes.length ? s.defect_classes.map((c) => {
    const tr = document.createElement("tr");
    const name = el("td", c.class);
    name.style.borderLeft = `4px solid ${COLOURS[c.class] || "#fff"}`;
    tr.append(name, el("td", c.defects), el("td", c.boards), el("td", pct(c.cumulative_share)));
    return tr;
  }) : [(() => { const tr = document.createElement("tr"); tr.append(el("td", "no defects")); return tr; })()]));
}

// the same period, one CSV row per board (fetched with the API key, then saved)
async function exportCsv(event) {
  event.preventDefault();
  try {
    await savePeriod(`${BASE}v1/inspections.csv`, Number($("period").value), `inspections-last-${$("period").value}h.csv`);
  } catch (err) {
    setStatus("summary-status", err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("inspect-form").addEventListener("submit", inspect);
  $("export").addEventListener("click", exportCsv);
  $("summary-refresh").addEventListener("click", summary);
  $("period").addEventListener("change", summary);
  $("api-key").addEventListener("change", summary);
  summary();
});
