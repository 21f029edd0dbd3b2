// The console's own behaviour: copy buttons, field highlighting after inline validation,
// and drawing the metrics tab's series with Chart.js (loaded from node_modules when present).
(function () {
  "use strict";

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return legacyCopy(text); });
    }
    return legacyCopy(text);
  }

  function legacyCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { area.remove(); }
    return Promise.resolve();
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button.copy");
    if (!button) return;
    const source = document.querySelector(button.dataset.copy);
    if (!source) return;
    copyText(source.innerText.trim()).then(function () {
      button.classList.add("copied");
      button.dataset.label = button.dataset.label || button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.classList.remove("copied"); button.textContent = button.dataset.label; }, 1500);
    });
  });

  // After inline validation, mark the fields that have errors.
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("#create-form [name]").forEach(function (input) {
      const errors = document.getElementById("error-" + input.name);
      if (errors) input.classList.toggle("invalid", errors.textContent.trim().length > 0);
    });
    drawCharts();
  });

  // Metrics: accepts {series: [...]}, a list of {title|name, unit, points|values: [[t, v], ...]},
  // or {name: [[t, v], ...]}; one chart per series, or a plain note when a window has no data.
  function seriesList(data) {
    if (data && !Array.isArray(data) && Array.isArray(data.series)) data = data.series;
    if (Array.isArray(data)) return data;
    if (data && typeof data === "object") {
      return Object.keys(data).map(function (k) {
        const v = data[k];
        return Array.isArray(v) ? { name: k, points: v } : Object.assign({ name: k }, v);
      });
    }
    return [];
  }

  function drawCharts() {
    const holder = document.getElementById("metrics-charts");
    const source = document.getElementById("metrics-data");
    if (!holder || !source || holder.dataset.drawn) return;
    holder.dataset.drawn = "1";
    let data;
    try { data = JSON.parse(source.textContent); } catch (e) { return; }
    seriesList(data).forEach(function (s) {
      const box = document.createElement("div");
      box.className = "chart";
      const title = document.createElement("h3");
      title.textContent = (s.title || s.name || "series") + (s.unit ? " (" + s.unit + ")" : "");
      box.appendChild(title);
      const points = s.points || s.values || [];
      if (!points.length) {
        const note = document.createElement("p");
        note.className = "muted";
        note.textContent = s.empty_message || "No requests in this window.";
        box.appendChild(note);
      } else if (window.Chart) {
        const canvas = document.createElement("canvas");
        box.appendChild(canvas);
        new window.Chart(canvas, {
          type: "line",
          data: {
            labels: points.map(function (p) { return new Date(p[0] * 1000).toLocaleTimeString(); }),
            datasets: [{ label: s.name || "", data: points.map(function (p) { return Number(p[1]); }),
                         pointRadius: 0, borderWidth: 2, tension: 0.2 }],
          },
          options: { animation: false, responsive: true, plugins: { legend: { display: false } } },
        });
      }
      holder.appendChild(box);
    });
  }

  document.addEventListener("DOMContentLoaded", drawCharts);
})();
