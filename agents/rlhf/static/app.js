// textgen-rl label: the client of agents/rlhf/label_server.py (JSON API under /api/).
// All text from the model is inserted with textContent, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let state = null;     // last /api/state reply
  let busy = false;     // a request is in flight: ignore further input (no double answers)
  let rankOrder = [];   // rank mode: indices clicked so far, best first

  const INSTRUCTIONS = {
    compare: "Which completion is better? Click it or press 1 / 2 (or ← / →).",
    rate: "Rate the completion from 1 (bad) to 5 (good): click a score or press 1–5.",
    rank: "Click (or press the numbers of) the completions from best to worst. Backspace clears.",
  };

  function setMessage(text, info) {
    $("message").textContent = text || "";
    $("message").className = info ? "message info" : "message";
  }

  async function api(method, path, body) {
    const options = { method, headers: {} };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    let payload = {};
    try { payload = await response.json(); } catch (e) { payload = { error: "bad reply from server" }; }
    if (!response.ok) throw new Error(payload.error || ("HTTP " + response.status));
    return payload;
  }

  async function act(path, body, info) {
    if (busy) return;
    busy = true;
    document.body.dataset.busy = "1";
    try {
      const next = await api("POST", path, body);
      setMessage(info ? info(next) : "", true);
      render(next);
    } catch (error) {
      setMessage(error.message);
      rankOrder = [];
      drawRanks();
      try { render(await api("GET", "/api/state")); } catch (e) { /* server gone */ }
    } finally {
      busy = false;
      document.body.dataset.busy = "0";
    }
  }

  function answer(fields) {
    if (!state || !state.item) return;
    act("/api/answer", Object.assign({ id: state.item.id }, fields));
  }
  function skip() {
    if (state && state.item) act("/api/skip", { id: state.item.id }, () => "skipped");
  }
  function undo() {
    if (state && state.can_undo) act("/api/undo", {}, (next) => "undid " + next.undone);
  }

  function card(text, index, clickable) {
    const el = document.createElement(clickable ? "button" : "div");
    el.className = clickable ? "card" : "card static";
    if (clickable) el.type = "button";
    el.dataset.index = String(index);
    el.dataset.testid = "completion-" + (index + 1);
    const key = document.createElement("span");
    key.className = "key";
    key.textContent = clickable ? "[" + (index + 1) + "]" : "Completion";
    const body = document.createElement("pre");
    body.textContent = text;
    if (text.trim() === "") {  // e.g. the model stopped at once: say so instead of an empty box
      body.textContent = text === "" ? "(empty completion)" : "(only whitespace)";
      body.className = "empty";
    }
    el.append(key, body);
    return el;
  }

  function pickRank(index) {
    const k = state.item.completions.length;
    if (index < 0 || index >= k || rankOrder.includes(index)) return;
    rankOrder.push(index);
    if (rankOrder.length === k - 1) {  // the last one is implied
      for (let i = 0; i < k; i++) if (!rankOrder.includes(i)) rankOrder.push(i);
    }
    drawRanks();
    if (rankOrder.length === k) answer({ order: rankOrder.slice() });
  }

  function drawRanks() {
    for (const el of $("completions").children) {
      const position = rankOrder.indexOf(Number(el.dataset.index));
      el.classList.toggle("ranked", position >= 0);
      let badge = el.querySelector(".rank");
      if (position >= 0) {
        if (!badge) { badge = document.createElement("span"); badge.className = "rank"; el.append(badge); }
        badge.textContent = "#" + (position + 1);
      } else if (badge) {
        badge.remove();
      }
    }
  }

  function render(next) {
    const previousId = state && state.item ? state.item.id : null;
    state = next;
    $("mode").textContent = "(" + state.mode + ")";
    $("progress").textContent = state.done + " / " + state.total + " done";
    $("progress-bar").max = Math.max(1, state.total);
    $("progress-bar").value = state.done;
    document.body.dataset.done = String(state.done);
    document.body.dataset.itemId = state.item ? state.item.id : "";
    $("undo").disabled = !state.can_undo;
    $("undo-done").disabled = !state.can_undo;
    $("skip").disabled = !state.item;

    if (state.finished) {
      $("work").hidden = true;
      $("done").hidden = false;
      $("done-text").textContent = "All " + state.total + " items are done (" + state.answered + " answered, " +
        state.skipped + " skipped). Your answers are saved; you can close this tab.";
      return;
    }
    $("done").hidden = true;
    $("work").hidden = false;
    if (state.item.id === previousId && $("completions").children.length) return;  // keep rank clicks

    rankOrder = [];
    $("instructions").textContent = INSTRUCTIONS[state.mode];
    $("prompt").textContent = state.item.prompt;
    const container = $("completions");
    container.replaceChildren();
    const clickable = state.mode !== "rate";
    state.item.completions.forEach((text, index) => {
      const el = card(text, index, clickable);
      if (clickable) {
        el.addEventListener("click", () => {
          if (state.mode === "compare") answer({ choice: index });
          else pickRank(index);
        });
      }
      container.append(el);
    });
    $("rating").hidden = state.mode !== "rate";
    $("clear").hidden = state.mode !== "rank";
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || !state) return;
    const key = event.key;
    if (key === "u" || key === "U") { event.preventDefault(); undo(); return; }
    if (!state.item) return;
    if (key === "s" || key === "S") { event.preventDefault(); skip(); return; }
    const digit = /^[1-9]$/.test(key) ? Number(key) : null;
    if (state.mode === "compare") {
      if (digit === 1 || key === "ArrowLeft") answer({ choice: 0 });
      else if (digit === 2 || key === "ArrowRight") answer({ choice: 1 });
      else return;
    } else if (state.mode === "rate") {
      if (digit !== null && digit >= state.rating_scale[0] && digit <= state.rating_scale[1]) answer({ score: digit });
      else return;
    } else {
      if (digit !== null) pickRank(digit - 1);
      else if (key === "Backspace") { rankOrder = []; drawRanks(); }
      else return;
    }
    event.preventDefault();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    document.addEventListener("keydown", onKey);
    $("skip").addEventListener("click", skip);
    $("undo").addEventListener("click", undo);
    $("undo-done").addEventListener("click", undo);
    $("clear").addEventListener("click", () => { rankOrder = []; drawRanks(); });
    for (const button of document.querySelectorAll("#rating .score")) {
      button.addEventListener("click", () => answer({ score: Number(button.dataset.score) }));
    }
    try {
      render(await api("GET", "/api/state"));
      document.body.dataset.ready = "1";
    } catch (error) {
      setMessage("cannot reach the labelling server: " + error.message);
    }
  });
})();
