// The gamemetrics dashboard: the read API for what is asked for, and two server-sent-event
// streams (read with fetch, so an API key can go in a header rather than the URL) for what
// changes by itself: the board and the pipeline.
"use strict";

const state = {
  key: sessionStorage.getItem("gm-key") || "",
  game: "",
  period: "alltime",
  day: "",
  week: "",
  board: null, // AbortController of the board stream
  pipeline: null, // AbortController of the pipeline stream
  scores: new Map(), // player -> score on screen, to mark who moved
};

const $ = (id) => document.getElementById(id);

function headers() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

class Unauthorized extends Error {}

/// GET a JSON document of the read API; a 401 means the page must ask for a key.
async function api(path) {
  const res = await fetch(path, { headers: headers() });
  if (res.status === 401) throw new Unauthorized("API key needed");
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    const err = new Error((body.error && body.error.message) || res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (kind || "");
}

/// Follows a server-sent-event stream until `signal` aborts it, reconnecting after a break.
async function follow(path, signal, onEvent, onRefused) {
  while (!signal.aborted) {
    try {
      const res = await fetch(path, { headers: headers(), signal });
      if (res.status === 401 || res.status === 403) {
        const body = await res.json().catch(() => ({}));
        onRefused(res.status, (body.error && body.error.message) || res.statusText);
        return;
      }
      if (!res.ok || !res.body) throw new Error(res.statusText);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (data.length) onEvent(event, JSON.parse(data.join("\n")));
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      setStatus("reconnecting…", "down");
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function cell(text, cls, tag) {
  const td = document.createElement(tag || "td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderBoard(page) {
  $("board-name").textContent = page.game_id + " · " + page.board;
  const body = $("board").tBodies[0];
  const rows = [];
  const seen = new Map();
  for (const e of page.entries) {
    const tr = document.createElement("tr");
    tr.dataset.player = e.player_id;
    tr.append(cell(e.rank), cell(e.player_id), cell(e.score.toLocaleString(), "num"));
    const before = state.scores.get(e.player_id);
    if (state.scores.size && before !== e.score) tr.className = "moved";
    seen.set(e.player_id, e.score);
    rows.push(tr);
  }
  state.scores = seen;
  body.replaceChildren(...rows);
  $("board-empty").hidden = rows.length > 0;
  setStatus("live · " + new Date().toLocaleTimeString(), "live");
}

function boardQuery() {
  const q = new URLSearchParams({ game: state.game, period: state.period, limit: "20" });
  if (state.period === "daily" && state.day) q.set("date", state.day);
  if (state.period === "weekly" && state.week) q.set("week", state.week);
  return q;
}

function watchBoard() {
  if (state.board) state.board.abort();
  state.scores = new Map();
  $("board").tBodies[0].replaceChildren();
  if (!state.game) return;
  state.board = new AbortController();
  follow("/dashboard/live/board?" + boardQuery(), state.board.signal, (event, data) => {
    if (event === "board") renderBoard(data);
    else if (event === "problem") setStatus(data.error, "down");
  }, (status, message) => setStatus(message, "down"));
}

function selectPeriod(period, past) {
  state.period = period;
  if (period !== "daily" || !past) state.day = "";
  if (period !== "weekly" || !past) state.week = "";
  if (!past) {
    $("past-day").value = "";
    $("past-week").value = "";
  }
  for (const b of document.querySelectorAll(".tabs button")) {
    b.setAttribute("aria-selected", String(b.dataset.period === period && !past));
  }
  watchBoard();
}

async function loadGames() {
  const { games } = await api("/games");
  const select = $("game");
  const current = state.game;
  select.replaceChildren(...games.map((g) => new Option(g, g)));
  if (!games.length) {
    $("board-empty").hidden = false;
    $("board-empty").textContent = "No game has scores yet.";
    // A new deployment: the first scored event's board write brings the first game.
    setTimeout(() => loadGames().catch(() => {}), 3000);
    return;
  }
  state.game = games.includes(current) ? current : games[0];
  select.value = state.game;
  if (state.game !== current) watchBoard();
}

async function findPlayer(id) {
  $("player-error").hidden = true;
  $("player-result").hidden = true;
  try {
    const [stats, events] = await Promise.all([
      api("/player/" + encodeURIComponent(id) + "/stats"),
      api("/player/" + encodeURIComponent(id) + "/events?limit=10"),
    ]);
    $("stat-total").textContent = stats.total_events.toLocaleString();
    $("stat-last").textContent = stats.last_event ? new Date(stats.last_event).toLocaleString() : "–";
    $("player-breakdown").tBodies[0].replaceChildren(
      ...Object.entries(stats.event_breakdown).map(([t, n]) => {
        const tr = document.createElement("tr");
        tr.append(cell(t), cell(n.toLocaleString(), "num"));
        return tr;
      }),
    );
    $("player-events").tBodies[0].replaceChildren(
      ...events.events.map((e) => {
        const tr = document.createElement("tr");
        tr.dataset.eventId = e.event_id;
        tr.append(cell(new Date(e.timestamp).toLocaleString()), cell(e.event_type), cell(e.game_id),
          cell(JSON.stringify(e.data), "data"));
        return tr;
      }),
    );
    $("player-result").hidden = false;
  } catch (e) {
    if (e instanceof Unauthorized) return askForKey();
    $("player-error").textContent = e.status === 404 ? "No player " + id + "." : e.message;
    $("player-error").hidden = false;
  }
}

function renderPipeline(p) {
  $("pipeline-figures").hidden = false;
  $("ingest-rate").textContent = p.ingest_per_sec == null ? "–" : Math.round(p.ingest_per_sec).toLocaleString() + "/s";
  $("latency-p50").textContent = p.latency_ms ? Math.round(p.latency_ms.p50) + " ms" : "–";
  $("latency-p99").textContent = p.latency_ms ? Math.round(p.latency_ms.p99) + " ms" : "–";
  $("dlq-count").textContent = p.dlq ? p.dlq.total + (p.dlq.not_replayed ? " (" + p.dlq.not_replayed + " to fix)" : "") : "–";
  const groups = p.partitions.length ? Object.keys(p.partitions[0].lag) : [];
  const head = document.createElement("tr");
  head.append(cell("Partition", "", "th"), cell("Log end", "num", "th"),
    ...groups.map((g) => cell("lag · " + g, "num", "th")));
  $("lag").tHead.replaceChildren(head);
  $("lag").tBodies[0].replaceChildren(
    ...p.partitions.map((part) => {
      const tr = document.createElement("tr");
      tr.append(cell(part.partition), cell(part.end.toLocaleString(), "num"),
        ...groups.map((g) => cell(part.lag[g] == null ? "–" : part.lag[g].toLocaleString(), "num")));
      return tr;
    }),
  );
  $("pipeline-problems").hidden = !p.problems.length;
  $("pipeline-problems").textContent = p.problems.join("; ");
}

function watchPipeline() {
  if (state.pipeline) state.pipeline.abort();
  state.pipeline = new AbortController();
  $("pipeline-note").hidden = true;
  follow("/dashboard/live/pipeline", state.pipeline.signal, (event, data) => {
    if (event === "pipeline") renderPipeline(data);
  }, (status, message) => {
    $("pipeline-note").textContent = message;
    $("pipeline-note").hidden = false;
    $("pipeline-figures").hidden = true;
  });
}

function askForKey(message) {
  if (state.board) state.board.abort();
  if (state.pipeline) state.pipeline.abort();
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-error").hidden = !message;
  $("key-error").textContent = message || "";
  setStatus("API key needed", "down");
  $("key-input").focus();
}

async function start() {
  try {
    await loadGames();
  } catch (e) {
    if (e instanceof Unauthorized) {
      return askForKey(state.key ? "That key was not accepted." : "");
    }
    setStatus(e.message, "down");
    setTimeout(start, 3000);
    return;
  }
  $("key-form").hidden = true;
  $("main").hidden = false;
  watchPipeline();
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key-input").value.trim();
    sessionStorage.setItem("gm-key", state.key);
    start();
  });
  $("game").addEventListener("change", (ev) => {
    state.game = ev.target.value;
    watchBoard();
  });
  for (const b of document.querySelectorAll(".tabs button")) {
    b.addEventListener("click", () => selectPeriod(b.dataset.period, false));
  }
  $("past-day").addEventListener("change", (ev) => {
    state.day = ev.target.value;
    selectPeriod("daily", !!state.day);
  });
  $("past-week").addEventListener("change", (ev) => {
    state.week = ev.target.value;
    selectPeriod("weekly", !!state.week);
  });
  $("player-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    findPlayer($("player-id").value.trim());
  });
  start();
});
