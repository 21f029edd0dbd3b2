// The detail page: the playground (a streamed call through the gateway, timed) and the
// Logs tab's follow-the-end scrolling.
(function () {
  "use strict";

  const KEY = "ie_api_key";

  function storedKey() {
    try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }

  function csrfToken() {
    try { return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || ""; }
    catch (e) { return ""; }
  }

  // One server-sent event's JSON, or null for [DONE] and anything else.
  function events(buffer) {
    const out = [];
    let rest = buffer;
    let cut;
    while ((cut = rest.indexOf("\n\n")) >= 0) {
      const block = rest.slice(0, cut);
      rest = rest.slice(cut + 2);
      block.split("\n").forEach(function (line) {
        if (!line.startsWith("data:")) return;
        const payload = line.slice(5).trim();
        if (payload === "[DONE]") { out.push({ done: true }); return; }
        try { out.push(JSON.parse(payload)); } catch (e) { /* a partial line never reaches here */ }
      });
    }
    return { parsed: out, rest: rest };
  }

  function piece(event) {
    const choice = (event.choices || [])[0];
    if (!choice) return "";
    if (choice.delta) return choice.delta.content || "";
    return choice.text || "";
  }

  async function problemText(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      const p = (body.problems || [])[0] || (body.error ? { message: body.error.message || body.error } : null);
      if (p) return p.message + (p.hint ? " " + p.hint : "");
    } catch (e) { /* not JSON */ }
    return "HTTP " + response.status + (text ? ": " + text.slice(0, 300) : "");
  }

  async function send(form) {
    const keyRow = document.getElementById("pg-key-row");
    const keyInput = document.getElementById("pg-key");
    const output = document.getElementById("pg-output");
    const stats = document.getElementById("pg-stats");
    const error = document.getElementById("pg-error");
    const button = document.getElementById("pg-send");
    const key = storedKey() || keyInput.value.trim();
    error.textContent = "";
    if (!key) {
      keyRow.hidden = false;
      error.textContent = "Paste an API key of this organization to send the request.";
      keyInput.focus();
      return;
    }
    const body = {
      mode: document.getElementById("pg-mode").value,
      prompt: document.getElementById("pg-prompt").value,
      max_tokens: Number(document.getElementById("pg-max-tokens").value || 32),
      temperature: Number(document.getElementById("pg-temperature").value || 0),
    };
    output.hidden = false;
    output.textContent = "";
    stats.textContent = "Sending…";
    button.disabled = true;
    const started = performance.now();
    let first = null;
    let usage = null;
    try {
      const response = await fetch("/endpoints/" + encodeURIComponent(form.dataset.endpoint) + "/_playground", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken(), "Authorization": "Bearer " + key },
        body: JSON.stringify(body),
      });
      if (!response.ok || !response.body) {
        if (response.status === 401) { try { sessionStorage.removeItem(KEY); } catch (e) {} keyRow.hidden = false; }
        error.textContent = await problemText(response);
        stats.textContent = "";
        return;
      }
      if (!storedKey()) { try { sessionStorage.setItem(KEY, key); } catch (e) {} }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const chunk = await reader.read();
        if (chunk.done) break;
        buffer += decoder.decode(chunk.value, { stream: true });
        const got = events(buffer);
        buffer = got.rest;
        got.parsed.forEach(function (event) {
          if (event.done) return;
          if (event.usage) usage = event.usage;
          const text = piece(event);
          if (text) {
            if (first === null) first = performance.now();
            output.textContent += text;
          }
        });
        if (first !== null) stats.textContent = "Time to first token " + Math.round(first - started) + " ms · streaming…";
      }
      const ended = performance.now();
      const tokens = usage ? usage.completion_tokens : null;
      const parts = [];
      parts.push(first === null ? "No text came back" : "Time to first token " + Math.round(first - started) + " ms");
      if (tokens !== null && first !== null && ended > first && tokens > 1) {
        parts.push((((tokens - 1) * 1000) / (ended - first)).toFixed(1) + " tokens/s after the first");
      }
      if (tokens !== null) parts.push(tokens + " tokens");
      parts.push("total " + Math.round(ended - started) + " ms");
      stats.textContent = parts.join(" · ");
      stats.dataset.ttftMs = first === null ? "" : String(Math.round(first - started));
      stats.dataset.tokens = tokens === null ? "" : String(tokens);
      stats.dataset.done = "true";
    } catch (e) {
      error.textContent = "The call failed: " + e;
      stats.textContent = "";
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form || form.id !== "pg-form") return;
    event.preventDefault();
    send(form);
  });

  document.addEventListener("DOMContentLoaded", function () {
    const keyRow = document.getElementById("pg-key-row");
    if (keyRow && !storedKey()) keyRow.hidden = false;
  });

  // Logs: a refresh keeps following the end unless the reader scrolled up.
  let following = true;
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "logs") return;
    const pre = document.getElementById("log-lines");
    if (pre) following = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    if (!event.detail.target || event.detail.target.id !== "logs") return;
    const pre = document.getElementById("log-lines");
    if (pre && following) pre.scrollTop = pre.scrollHeight;
  });
})();
