// The console's own behaviour: copy buttons, field highlighting after inline validation,
// the Create button's state, and drawing the metrics tab's charts (specs from charts.py) with
// Chart.js (loaded from node_modules when present).
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

  // Precisions the chosen instance cannot serve are not offered (shown, disabled, saying why).
  function syncPrecisions() {
    const instance = document.getElementById("f-instance");
    const precision = document.getElementById("f-precision");
    if (!instance || !precision) return;
    const chosen = instance.selectedOptions[0];
    if (!chosen || chosen.dataset.precisions === undefined) return;
    const served = chosen.dataset.precisions.split(" ");
    Array.from(precision.options).forEach(function (option) {
      const off = !served.includes(option.value);
      option.disabled = off;
      option.textContent = option.value + (off ? " (not on " + instance.value + ")" : "");
    });
  }
  document.addEventListener("change", function (event) {
    if (event.target && event.target.id === "f-instance") syncPrecisions();
  });
  document.addEventListener("DOMContentLoaded", syncPrecisions);

  // The fit panel's "use the cheapest instance that fits": choose it, then check again.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("#use-cheapest");
    const select = document.getElementById("f-instance");
    if (!button || !select) return;
    select.value = button.dataset.instance;
    select.dispatchEvent(new Event("change", { bubbles: true }));
  });

  // The Create button follows the inline validation: disabled while #check-result says
  // data-ok="false" (problems to fix), enabled when it passes or before any check ran.
  function syncCreateButton() {
    const button = document.getElementById("create-submit");
    if (!button) return;
    const result = document.getElementById("check-result");
    const blocked = !!result && result.dataset.ok === "false";
    button.disabled = blocked;
    button.title = blocked ? "Fix the problems listed under \u201cChecks and fit estimate\u201d first." : "";
    if (blocked) button.setAttribute("aria-describedby", "check-result");
    else button.removeAttribute("aria-describedby");
  }

  // After inline validation, mark the fields that have errors.
  document.addEventListener("htmx:afterSettle", function () {
    document.querySelectorAll("#create-form [name]").forEach(function (input) {
      const errors = document.getElementById("error-" + input.name);
      if (errors) input.classList.toggle("invalid", errors.textContent.trim().length > 0);
    });
    syncCreateButton();
    drawCharts();
  });

  // Charts about to be replaced (the metrics tab refreshes itself): free their Chart.js instances.
  document.addEventListener("htmx:beforeSwap", function (event) {
    const target = event.detail && event.detail.target;
    if (!target || !window.Chart || typeof window.Chart.getChart !== "function") return;
    target.querySelectorAll("canvas").forEach(function (canvas) {
      const chart = window.Chart.getChart(canvas);
      if (chart) chart.destroy();
    });
  });

  // ---- metrics: specs from charts.py (one per chart group, values already in display units) ----

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // 24-hour UTC "HH:MM" (":SS" too for tooltips) from unix seconds: the same for every viewer.
  function utcLabel(seconds, withSeconds) {
    const d = new Date(Number(seconds) * 1000);
    if (isNaN(d.getTime())) return "";
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + (withSeconds ? ":" + pad(d.getUTCSeconds()) : "");
  }

  function formatValue(value) {
    const v = Number(value);
    if (!isFinite(v)) return "";
    const abs = Math.abs(v);
    const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : abs >= 0.01 ? 3 : 5;
    return v.toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  const COLORS = ["#2f5bd3", "#c2410c", "#15803d", "#7c3aed", "#b42318", "#0e7490"];

  function readCharts(source) {
    let data;
    try { data = JSON.parse(source.textContent || "null"); } catch (e) { return []; }
    return data && Array.isArray(data.charts) ? data.charts : [];
  }

  function chartBox(spec) {
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.chart = spec.key || "";
    const title = document.createElement("h3");
    title.textContent = (spec.title || spec.key || "series") + (spec.unit ? " (" + spec.unit + ")" : "");
    box.appendChild(title);
    return box;
  }

  function note(box, text) {
    const p = document.createElement("p");
    p.className = "muted chart-empty";
    p.textContent = text;
    box.appendChild(p);
  }

  function chartConfig(spec) {
    const x = spec.x || {};
    const y = spec.y || {};
    const ticks = Array.isArray(x.ticks) ? x.ticks : [];
    const unit = spec.unit ? " " + spec.unit : "";
    const datasets = (spec.datasets || []).map(function (d, i) {
      const color = COLORS[i % COLORS.length];
      return {
        label: d.label || d.name || "",
        data: (d.points || []).map(function (p) { return { x: Number(p[0]), y: Number(p[1]) }; }),
        borderColor: color, backgroundColor: color, borderWidth: 2, tension: 0,
        pointRadius: (d.points || []).length <= 12 ? 2 : 0, pointHoverRadius: 4, spanGaps: false,
      };
    });
    const xScale = {
      type: "linear", min: x.min, max: x.max,
      title: { display: true, text: x.title || "Time (UTC)" },
      ticks: { maxRotation: 0, autoSkip: true, callback: function (value) { return utcLabel(value, false); } },
    };
    if (ticks.length) {
      xScale.afterBuildTicks = function (scale) {
        scale.ticks = ticks.map(function (t) { return { value: Number(t.value) }; });
      };
    }
    const yScale = {
      type: "linear", beginAtZero: y.min === 0,
      title: { display: !!y.title, text: y.title || "" },
      ticks: { callback: function (value) { return formatValue(value); } },
    };
    if (typeof y.min === "number") { yScale.min = y.min; yScale.suggestedMin = y.min; }
    if (typeof y.suggested_max === "number") yScale.suggestedMax = y.suggested_max;
    if (typeof y.precision === "number") yScale.ticks.precision = y.precision;
    return {
      type: "line",
      data: { datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: true, aspectRatio: 2, parsing: false,
        interaction: { mode: "index", intersect: false, axis: "x" },
        scales: { x: xScale, y: yScale },
        plugins: {
          legend: { display: datasets.length > 1, position: "bottom" },
          tooltip: {
            enabled: true,
            callbacks: {
              title: function (items) { return items.length ? utcLabel(items[0].parsed.x, true) + " UTC" : ""; },
              label: function (item) {
                return (item.dataset.label ? item.dataset.label + ": " : "") + formatValue(item.parsed.y) + unit;
              },
            },
          },
        },
      },
    };
  }

  function drawChart(holder, spec) {
    const box = chartBox(spec);
    holder.appendChild(box);
    const hasPoints = (spec.datasets || []).some(function (d) { return d.points && d.points.length; });
    if (!hasPoints) { note(box, spec.empty_message || "No data in this window."); return; }
    if (!window.Chart) { note(box, "Charts need Chart.js (scripts/setup-frontend.sh installs it)."); return; }
    const canvas = document.createElement("canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", spec.aria_label || box.firstChild.textContent);
    canvas.textContent = spec.aria_label || "";
    box.appendChild(canvas);
    try {
      new window.Chart(canvas, chartConfig(spec));
    } catch (e) {
      canvas.remove();
      note(box, "This chart could not be drawn.");
      if (window.console) window.console.warn("chart", spec.key, e);
    }
  }

  function drawCharts() {
    const holder = document.getElementById("metrics-charts");
    const source = document.getElementById("metrics-data");
    if (!holder || !source || holder.dataset.drawn) return;
    holder.dataset.drawn = "1";
    const charts = readCharts(source);
    if (!charts.length) { note(holder, "No series in this window."); return; }
    charts.forEach(function (spec) { if (spec && typeof spec === "object") drawChart(holder, spec); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    syncCreateButton();
    drawCharts();
  });
})();
