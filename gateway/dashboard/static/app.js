// The customer dashboard: plain DOM, no dependencies, talks only to this origin.
"use strict";

const KEY = "gateway.apiKey";
const COLORS = ["#2456d6", "#e07b24", "#2a9d6f", "#a23bcf", "#c9374a", "#5d7290", "#b59b12"];
const $ = (id) => document.getElementById(id);
let state = { account: null, countdown: null, preview: null };

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(path, options = {}) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(path, {
    method: options.method || "GET",
    headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
    body: options.body ? JSON.stringify(options.body) : undefined,
    credentials: "omit",
    cache: "no-store",
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const error = data && data.error;
    const words = error ? error.message : "The gateway answered " + response.status;
    throw new Error(words + (error && error.code ? " (" + error.code + ")" : ""));
  }
  return data;
}

const money = (cents) => "$" + (cents / 100).toFixed(2);
const number = (n) => Number(n).toLocaleString("en-US");
const day = (iso) => new Date(iso).toISOString().slice(0, 10);
const when = (iso) => new Date(iso).toISOString().replace("T", " ").slice(0, 16) + " UTC";

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

function fillTable(id, rows, columns) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren();
  for (const item of rows) {
    const row = document.createElement("tr");
    for (const column of columns) cell(row, column(item));
    body.appendChild(row);
  }
  if (!rows.length) {
    const row = document.createElement("tr");
    cell(row, "Nothing yet");
    body.appendChild(row);
  }
}

function renderAccount(account, credits) {
  state.account = account;
  $("plan").textContent = account.plan || "Enterprise contract";
  $("status").textContent = account.status;
  $("pending").textContent = account.pending_change
    ? "Changes to " + account.pending_change.plan + " on " + day(account.pending_change.effective_at)
    : "";
  $("cycle").textContent = day(account.cycle.start) + " → " + day(account.cycle.end);
  $("credits-remaining").textContent = number(credits.remaining);
  const c = account.credits;
  $("credits-detail").textContent = "of " + number(c.allocation) + " this cycle · used " +
    number(c.used) + (c.held ? " · held " + number(c.held) : "") +
    (c.overage ? " · overage " + number(c.overage) : "");
  const share = c.allocation ? Math.max(0, Math.min(1, credits.remaining / c.allocation)) : 0;
  $("credits-meter").style.width = (share * 100).toFixed(1) + "%";
  $("concurrency").textContent = account.concurrency.current + " / " + account.concurrency.limit;
  const enterprise = !account.plan;
  $("manage").hidden = enterprise;
  $("cancel").hidden = account.status !== "active";
  $("reactivate").hidden = account.status !== "canceling";
  $("plan-form").hidden = account.status === "canceling";
  startCountdown(account.cycle.end, account.status);
}

function startCountdown(endIso, status) {
  clearInterval(state.countdown);
  const tick = () => {
    const left = Math.max(0, new Date(endIso) - Date.now());
    const d = Math.floor(left / 86400000);
    const h = Math.floor(left % 86400000 / 3600000);
    const m = Math.floor(left % 3600000 / 60000);
    const s = Math.floor(left % 60000 / 1000);
    const verb = status === "active" ? "Renews" : status === "canceling" ? "Ends" : "Ended";
    $("countdown").textContent = verb + " in " + d + "d " + h + "h " + m + "m " + s + "s";
  };
  tick();
  state.countdown = setInterval(tick, 1000);
}

function renderPlans(plans, account) {
  const select = $("plan-choice");
  select.replaceChildren();
  for (const plan of plans) {
    if (plan.name === account.plan) continue;
    const option = document.createElement("option");
    option.value = plan.name;
    option.textContent = plan.name + " — " + money(plan.price_cents) + "/month, " +
      number(plan.credits) + " credits, " + plan.concurrency + " concurrent";
    select.appendChild(option);
  }
}

function svg(name, attributes) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

function renderChart(usage, account) {
  const start = new Date(account.cycle.start);
  const end = new Date(account.cycle.end);
  const days = [];
  for (let t = Date.UTC(start.getUTCFullYear(), start.getUTCMonth(), start.getUTCDate());
       t < end.getTime(); t += 86400000) days.push(new Date(t).toISOString().slice(0, 10));
  const routes = [...new Set(usage.buckets.map((b) => b.route))].sort();
  const perDay = new Map(days.map((d) => [d, new Map()]));
  for (const bucket of usage.buckets) {
    const slot = perDay.get(day(bucket.start));
    if (slot) slot.set(bucket.route, (slot.get(bucket.route) || 0) + bucket.credits);
  }
  const totals = days.map((d) => [...perDay.get(d).values()].reduce((a, b) => a + b, 0));
  const allocation = account.credits.allocation;
  let spent = 0;
  const balance = totals.map((t) => allocation - (spent += t));
  const width = 760, height = 240, pad = 24;
  const maxBar = Math.max(1, ...totals);
  const maxLine = Math.max(1, allocation);
  const step = (width - 2 * pad) / Math.max(1, days.length);
  const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, "data-days": days.length,
                             "data-routes": routes.length });
  chart.appendChild(svg("line", { x1: pad, y1: height - pad, x2: width - pad, y2: height - pad,
                                  stroke: "#c5ccd9" }));
  days.forEach((d, i) => {
    let y = height - pad;
    routes.forEach((route, r) => {
      const value = perDay.get(d).get(route) || 0;
      if (!value) return;
      const h = value / maxBar * (height - 2 * pad);
      y -= h;
      const bar = svg("rect", { x: pad + i * step + 1, y: y, width: Math.max(1, step - 2),
                                height: h, fill: COLORS[r % COLORS.length], class: "bar" });
      const title = svg("title", {});
      title.textContent = d + " · " + route + ": " + number(value) + " credits";
      bar.appendChild(title);
      chart.appendChild(bar);
    });
    if (i % Math.ceil(days.length / 8) === 0) {
      const label = svg("text", { x: pad + i * step, y: height - pad + 16, "font-size": 11,
                                  fill: "#5b6475" });
      label.textContent = d.slice(5);
      chart.appendChild(label);
    }
  });
  const today = new Date().toISOString().slice(0, 10);
  const points = balance.map((b, i) => [pad + (i + 0.5) * step,
    height - pad - Math.max(0, b) / maxLine * (height - 2 * pad)])
    .filter((_, i) => days[i] <= today);
  if (points.length) {
    chart.appendChild(svg("polyline", { points: points.map((p) => p.join(",")).join(" "),
                                        fill: "none", stroke: "#1d2330", "stroke-width": 2,
                                        class: "balance" }));
    for (const [x, y] of points) {
      chart.appendChild(svg("circle", { cx: x, cy: y, r: 3, fill: "#1d2330" }));
    }
  }
  const top = svg("text", { x: pad, y: 12, "font-size": 11, fill: "#5b6475" });
  top.textContent = "bars: credits per day (max " + number(maxBar) + ") · line: balance";
  chart.appendChild(top);
  $("usage-chart").replaceChildren(chart);
  const legend = $("chart-legend");
  legend.replaceChildren();
  routes.forEach((route, r) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.style.background = COLORS[r % COLORS.length];
    item.append(swatch, route);
    legend.appendChild(item);
  });
}

function renderWebhooks(settings) {
  $("webhook-status").textContent = settings.signing ? "on" : "off";
  $("webhook-since").textContent = settings.signing
    ? "Current secret created " + when(settings.created_at) + "."
    : "Webhooks are sent unsigned.";
  $("webhook-enable").hidden = settings.signing;
  $("webhook-rotate").hidden = !settings.signing;
  $("webhook-disable").hidden = !settings.signing;
}

// The secret lives in the page alone (never in storage): a reload or sign-out forgets it.
function showSecret(secret) {
  $("webhook-secret").textContent = secret;
  $("webhook-new").hidden = !secret;
}

// The org's queue (SPEC 10); a gateway without the async API answers 404: no panel then.
async function loadTasks() {
  let status, listed;
  try {
    [status, listed] = await Promise.all([api("/v1/async/status"),
                                          api("/v1/async/tasks?limit=25")]);
  } catch (error) {
    if (/RESOURCE_NOT_FOUND/.test(error.message)) { $("async-panel").hidden = true; return; }
    throw error;
  }
  $("async-queued").textContent = number(status.queuedTasks);
  $("async-processing").textContent = number(status.processingTasks);
  fillTable("async-table", listed.tasks, [
    (t) => when(t.createdAt), (t) => t.taskType, (t) => t.status, (t) => String(t.priority),
    (t) => t.credits.creditsCharged === null
      ? "up to " + number(t.credits.creditsToCharge) : number(t.credits.creditsCharged),
    (t) => t.id,
  ]);
  $("async-panel").hidden = false;
}

async function load() {
  const [account, credits, usage, requests, billing, plans, webhooks] = await Promise.all([
    api("/v1/account"), api("/v1/credits"), api("/v1/account/usage?granularity=day"),
    api("/v1/account/requests?limit=25"), api("/v1/account/billing"), api("/v1/plans"),
    api("/v1/webhooks"),
  ]);
  renderAccount(account, credits);
  renderWebhooks(webhooks);
  await loadTasks();
  renderPlans(plans.plans, account);
  renderChart(usage, account);
  fillTable("recent-requests", requests.requests, [
    (r) => when(r.time), (r) => r.route, (r) => String(r.status), (r) => number(r.credits),
    (r) => r.latency_ms + " ms", (r) => r.id,
  ]);
  fillTable("billing-history", billing.entries, [
    (e) => day(e.occurred_at), (e) => e.type.replace("_", " "), (e) => money(e.amount_cents),
    (e) => number(e.credits), (e) => e.description,
  ]);
  $("sign-in-form").hidden = true;
  $("signed-in").hidden = false;
  $("sign-out").hidden = false;
}

function signOut() {
  sessionStorage.removeItem(KEY);
  clearInterval(state.countdown);
  state = { account: null, countdown: null, preview: null };
  showSecret("");
  $("signed-in").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in-form").hidden = false;
  $("api-key").value = "";
  $("api-key").focus();
}

async function guarded(action) {
  showError("");
  try {
    await action();
  } catch (error) {
    showError(error.message);
  }
}

function wire() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    guarded(async () => {
      try {
        await load();
      } catch (error) {
        signOut();
        throw error;
      }
    });
  });
  $("sign-out").addEventListener("click", () => { showError(""); signOut(); });
  $("plan-form").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const plan = $("plan-choice").value;
      const preview = await api("/v1/account/subscription/preview",
                                { method: "POST", body: { plan } });
      state.preview = preview;
      $("confirm-text").textContent = preview.change === "upgrade"
        ? "Upgrade to " + plan + " now. You will be charged " + money(preview.charge_cents) +
          " today for the " + preview.days_left + " days left of " + preview.days_total +
          "; your cycle dates stay the same."
        : preview.change === "subscribe"
          ? "Subscribe to " + plan + " now for " + money(preview.charge_cents) + "."
          : "Move to " + plan + " on " + day(preview.effective_at) + ". Nothing is charged now.";
      $("confirm").hidden = false;
      $("confirm-yes").focus();
    });
  });
  $("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; });
  $("confirm-yes").addEventListener("click", () => guarded(async () => {
    const done = await api("/v1/account/subscription",
                           { method: "POST", body: { plan: state.preview.plan } });
    $("confirm").hidden = true;
    $("manage-note").textContent = done.change === "upgrade"
      ? "Upgraded: " + money(done.charge_cents) + " charged."
      : "Scheduled for " + day(done.effective_at) + ".";
    await load();
  }));
  $("cancel").addEventListener("click", () => guarded(async () => {
    const done = await api("/v1/account/subscription/cancel", { method: "POST" });
    $("manage-note").textContent = "Canceled: service continues until " +
      day(done.effective_at) + ".";
    await load();
  }));
  $("reactivate").addEventListener("click", () => guarded(async () => {
    await api("/v1/account/subscription/reactivate", { method: "POST" });
    $("manage-note").textContent = "Reactivated: your subscription renews as before.";
    await load();
  }));
  const newSecret = () => guarded(async () => {
    const made = await api("/v1/webhooks/secret", { method: "POST" });
    showSecret(made.secret);
    renderWebhooks(await api("/v1/webhooks"));
  });
  $("webhook-enable").addEventListener("click", newSecret);
  $("webhook-rotate").addEventListener("click", newSecret);
  $("webhook-disable").addEventListener("click", () => guarded(async () => {
    await api("/v1/webhooks/secret", { method: "DELETE" });
    showSecret("");
    renderWebhooks(await api("/v1/webhooks"));
  }));
  if (sessionStorage.getItem(KEY)) guarded(load);
}

document.addEventListener("DOMContentLoaded", wire);
