// Shared by the apps' web pages (core.serving.page_router serves it beside each page's own files):
// the API key, requests' headers, the services' JSON errors, DOM built from text only (data shown
// on a page is never parsed as HTML).
"use strict";

const triptych = (() => {
  const $ = (id) => document.getElementById(id);
  const KEY = "triptych-api-key";

  // ".../customer-service/" for a page at ".../customer-service/ui/": the app's routes are relative to it
  const base = () => location.pathname.replace(/ui\/(index\.html)?$/, "");

  function apiKey() {
    const key = $("api-key").value.trim();
    sessionStorage.setItem(KEY, key);  // this tab only, gone when it closes
    return key;
  }

  function headers(extra = {}) {
    const key = apiKey();
    return key ? { ...extra, "X-API-Key": key } : extra;
  }

  // Whether ``response`` is a 401 to a request sent without a key (``sent``: the headers it went with), which a
  // page answers by asking for the key. A key that was sent and refused is an error to show as the API words it
  // ("the API key is not recognised"), not a missing key.
  const keyMissing = (response, sent) => response.status === 401 && !("X-API-Key" in sent);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function setStatus(id, text, isError = false) {
    $(id).textContent = text;
    $(id).classList.toggle("error", isError);
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body.error) return `${body.error.message} (${response.status} ${body.error.code})`;
      if (body.payload && body.payload.error) return body.payload.error.message;
    } catch (_) { /* not JSON */ }
    return `HTTP ${response.status}`;
  }

  // a protected file (heat map, archive) as an object URL: img and a elements cannot send the key
  async function fetchBlobUrl(url) {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) throw new Error(await errorText(response));
    return URL.createObjectURL(await response.blob());
  }

  // the query of the last ``hours`` for a period route (?since=...&until=..., UTC)
  function periodQuery(hours) {
    const until = new Date();
    const since = new Date(until.getTime() - hours * 3600e3);
    return new URLSearchParams({ since: since.toISOString(), until: until.toISOString() });
  }

  // The kit's period section (<!-- kit:period -->, with the page's "summary-status" and "summary-body"):
  // GET a summary route over the chosen hours and hand its JSON to ``show``; without an API key the
  // section says what it needs instead of showing an error (a key refused is an error, in the API's words).
  const PERIOD = { select: "period", status: "summary-status", body: "summary-body" };

  async function showPeriod(url, what, show) {
    setStatus(PERIOD.status, "Loading…");
    try {
      const sent = headers();
      const response = await fetch(`${url}?${periodQuery(Number($(PERIOD.select).value))}`, { headers: sent });
      if (!response.ok) $(PERIOD.body).hidden = true;  // no other key's (or period's) numbers left on show
      if (keyMissing(response, sent)) {
        setStatus(PERIOD.status, `Enter the API key to see ${what}.`);
        return;
      }
      if (!response.ok) throw new Error(await errorText(response));
      show(await response.json());
    } catch (err) {
      setStatus(PERIOD.status, err.message, true);
    }
  }

  // a period route's file (a CSV export) over the last ``hours``, fetched with the key and saved
  async function savePeriod(url, hours, filename) {
    const blob = await fetchBlobUrl(`${url}?${periodQuery(hours)}`);
    const a = el("a");
    a.href = blob;
    a.download = filename;
    a.click();
    setTimeout(() => URL.revokeObjectURL(blob), 60_000);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const pct = (p) => `${Math.round(100 * p)} %`;

  // one row of a bar chart (common.css .bar): label, a bar as long as p (0-1), the percentage and a note
  function bar(label, p, { cls = "", note = "" } = {}) {
    const row = el("div", null, "bar");
    const fill = el("span", null, `fill ${cls}`.trim());
    fill.style.width = `${Math.max(2, 120 * p)}px`;
    row.append(el("span", label), fill, el("span", pct(p) + note));
    return row;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("api-key").value = sessionStorage.getItem(KEY) || "";
  });

  return { $, base, apiKey, headers, keyMissing, el, setStatus, errorText, fetchBlobUrl, showPeriod, savePeriod, bar, sleep, pct };
})();
