/* playground: the one small script for what htmx attributes cannot do.
 *
 * - the shared token tooltip (one element, driven by event delegation: no listener per token);
 * - the prompt editor's keys (Tab indents, Ctrl/Cmd+Enter generates, Esc releases Tab);
 * - sliders and their numeric inputs kept in sync both ways;
 * - the Stop button (aborts the htmx request; the server sees the disconnect and closes the
 *   upstream stream) and the running state of the form.
 *
 * Everything model-written is inserted with textContent, never as HTML.
 */
(() => {
  "use strict";

  const INDENT = "    ";
  const runData = new WeakMap(); // run element -> its parsed alternatives (see alternativesOf)

  const $ = (selector, root = document) => root.querySelector(selector);

  // ---------------------------------------------------------------- tooltip

  const visible = (text) =>
    text.replace(/ /g, "·").replace(/\t/g, "→").replace(/\r?\n/g, "⏎");

  const percent = (logprob) => {
    const p = Math.exp(logprob) * 100;
    if (p >= 99.95) return "100%";
    if (p >= 10) return p.toFixed(1) + "%";
    if (p >= 0.01) return p.toFixed(2) + "%";
    return "<0.01%";
  };

  // A run's alternatives (rendering.py): per token how many ("n"), then all their texts ("t")
  // and logprobs in ten-thousandths ("l"), token after token. Parsed once, on first hover.
  function alternativesOf(run) {
    if (!runData.has(run)) {
      const script = $("script.run-data", run);
      let parsed = null;
      try {
        const data = script ? JSON.parse(script.textContent) : null;
        if (data && Array.isArray(data.n)) {
          let at = 0;
          parsed = { ...data, starts: data.n.map((n) => (at += n) - n) };
        }
      } catch (err) {
        parsed = null;
      }
      runData.set(run, parsed);
    }
    return runData.get(run);
  }

  // [text, logprob|null, [[alt_text, alt_logprob], ...] most likely first] for a token span:
  // its own text and logprob are on the span.
  function tokenData(tokenEl) {
    const run = tokenEl.closest("[data-run]");
    const data = run && alternativesOf(run);
    const i = Number(tokenEl.dataset.i);
    if (!data || !(i < data.n.length)) return null;
    const alternatives = [];
    for (let k = data.starts[i]; k < data.starts[i] + data.n[i]; k++) {
      alternatives.push([data.t[k], data.l[k] / 10000]);
    }
    alternatives.sort((a, b) => b[1] - a[1]); // stable: ties keep the backend's order
    const logprob = tokenEl.dataset.logprob;
    return [tokenEl.textContent, logprob === undefined ? null : Number(logprob), alternatives];
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  // The sampling lens: what the run's temperature and top P did to the returned alternatives,
  // computed from their logprobs (the model's raw distribution, as vLLM and the built-in model
  // report it), without a new request. Only the top alternatives are known: the rest of the
  // vocabulary holds the remaining mass R, each of its tokens no likelier than the last one
  // shown. That bounds the reshaped distribution; where the bounds cannot settle whether top P
  // keeps a token, the lens says so rather than guess. Penalties are not modelled.
  function lens(alternatives, attrs) {
    const T = parseFloat(attrs.temperature);
    const topP = parseFloat(attrs.topP);
    if (!(T >= 0) || !(topP >= 0)) return null;
    const p = alternatives.map(([, lp]) => Math.exp(lp));
    const fmt = (x) => (x * 100).toFixed(x >= 0.1 ? 1 : 2) + "%";
    const head = `Lens (temperature ${T}, top P ${topP}): `;
    if (T === 0) {
      return { rows: p.map((_, k) => [k ? "0%" : "100%", k > 0]),
        note: head + "greedy, so only the most likely token can be chosen." };
    }
    const rest = Math.max(0, 1 - p.reduce((a, b) => a + b, 0));
    const w = p.map((x) => Math.pow(x, 1 / T));
    const known = w.reduce((a, b) => a + b, 0);
    // Bounds on the unseen tail's reshaped mass Σ p^(1/T): exactly R at T = 1; below 1 at most
    // min(R^(1/T), R·pmin^(1/T-1)) (no tail token beats the last one shown); above 1 at least
    // R^(1/T) (x^(1/T) is subadditive there) and unbounded.
    const a = 1 / T;
    const tailLo = T > 1 ? Math.pow(rest, a) : T === 1 ? rest : 0;
    const tailHi = T < 1 ? Math.min(Math.pow(rest, a), rest * Math.pow(Math.min(...p), a - 1))
      : T === 1 ? rest : Infinity;
    let before = [0, 0]; // cumulative reshaped mass of the likelier alternatives: [low, high]
    let unsure = 0;
    let cut = 0;
    const rows = w.map((x) => {
      const lo = x / (known + tailHi);
      const hi = x / (known + tailLo);
      let verdict = false;
      if (topP < 1) {
        verdict = before[0] >= topP ? true : before[1] < topP ? false : null;
      }
      before = [before[0] + lo, before[1] + hi];
      if (verdict === null) unsure++;
      if (verdict === true) cut++;
      const q = hi - lo < 0.0005 ? "→ " + fmt(hi) : lo < 0.0005 ? "→ ≤" + fmt(hi) : `→ ${fmt(lo)}–${fmt(hi)}`;
      return [q, verdict];
    });
    let note = head + (cut ? `top P cuts the ${cut} struck-out alternative${cut > 1 ? "s" : ""}.` : "top P cuts none of these.");
    if (unsure || alternatives.length < 2) {
      note = head + "the backend returned too few alternatives to tell which ones top P cuts" +
        (unsure ? ` (${unsure} marked “?”).` : ".");
    }
    return { rows, note };
  }

  let current = null; // the token whose tooltip is shown

  function showTooltip(tokenEl) {
    const tip = $("#tooltip");
    const entry = tokenData(tokenEl);
    if (!tip || !entry) return;
    const [text, logprob, alternatives] = entry;
    tip.replaceChildren();

    const head = el("div", "tt-head");
    head.append(el("code", "tt-token", visible(text)));
    if (logprob != null) {
      head.append(el("span", "tt-prob", percent(logprob)));
      head.append(el("span", "tt-logprob", "logprob " + logprob.toFixed(4)));
    } else {
      head.append(el("span", "tt-prob", "no probability"));
    }
    tip.append(head);

    if (alternatives && alternatives.length) {
      const run = tokenEl.closest("[data-run]");
      // Branching needs a saved run of this editor: elsewhere (a share page) the list is read-only.
      const branchable = run.dataset.runId && $("#generate-form");
      const seen = lens(alternatives, run.dataset);
      const list = el("ol", "tt-alts");
      list.setAttribute("aria-label", branchable ? "Top alternatives: choose one to branch" : "Top alternatives");
      let chosenListed = false;
      alternatives.forEach(([altText, altLogprob], k) => {
        const item = el("li", "tt-alt");
        const chosen = altText === text;
        if (chosen) {
          item.classList.add("chosen");
          chosenListed = true;
        }
        const row = el(branchable ? "button" : "span", "tt-row");
        if (branchable) {
          row.type = "button";
          row.dataset.k = k;
          row.title = "Branch: continue from here with this token";
        }
        const bar = el("span", "tt-bar");
        bar.style.setProperty("--p", Math.exp(altLogprob).toFixed(4));
        row.append(el("code", "tt-alt-token", visible(altText)), bar,
          el("span", "tt-alt-prob", percent(altLogprob)));
        if (seen) {
          const [q, cut] = seen.rows[k];
          row.append(el("span", "tt-lens", q));
          if (cut === true) item.classList.add("cut");
          if (cut === null) item.classList.add("unsure");
        }
        if (chosen) row.append(el("span", "tt-chosen", "chosen"));
        item.append(row);
        list.append(item);
      });
      tip.append(list);
      if (!chosenListed) {
        tip.append(el("p", "tt-note", "The chosen token was not among the top alternatives."));
      }
      if (seen) tip.append(el("p", "tt-note tt-lens-note", seen.note));
    }

    tip.hidden = false;
    position(tip, tokenEl);
    if (current && current !== tokenEl) current.removeAttribute("aria-describedby");
    tokenEl.setAttribute("aria-describedby", "tooltip");
    current = tokenEl;
  }

  function position(tip, anchor) {
    const box = anchor.getBoundingClientRect();
    const margin = 6;
    const width = tip.offsetWidth;
    const height = tip.offsetHeight;
    let left = box.left;
    let top = box.bottom; // no gap: the pointer moves straight from the token into the tooltip
    if (left + width > window.innerWidth - margin) left = window.innerWidth - width - margin;
    if (top + height > window.innerHeight - margin) top = box.top - height - margin;
    tip.style.left = Math.max(margin, left) + window.scrollX + "px";
    tip.style.top = Math.max(margin, top) + window.scrollY + "px";
  }

  function hideTooltip() {
    const tip = $("#tooltip");
    if (tip) tip.hidden = true;
    if (current) current.removeAttribute("aria-describedby");
    current = null;
  }

  const tokenFrom = (target) =>
    target instanceof Element ? target.closest("[data-run] .t") : null;

  document.addEventListener("mouseover", (event) => {
    const token = tokenFrom(event.target);
    if (token && token !== current) showTooltip(token);
  });
  const inTip = (node) => node instanceof Node && $("#tooltip")?.contains(node);
  document.addEventListener("mouseout", (event) => {
    if (!current) return;
    const from = tokenFrom(event.target) === current || inTip(event.target);
    const to = event.relatedTarget;
    if (from && !current.contains(to) && !inTip(to) && document.activeElement !== current
        && !inTip(document.activeElement)) hideTooltip();
  });
  document.addEventListener("focusin", (event) => {
    const token = tokenFrom(event.target);
    if (token) showTooltip(token);
  });
  document.addEventListener("focusout", (event) => {
    if (!current) return;
    const to = event.relatedTarget;
    if ((event.target === current || inTip(event.target)) && to !== current && !inTip(to)) hideTooltip();
  });
  // Choosing an alternative branches: a new run from the prompt + the output up to this token
  // + the alternative, with the run's parameters (the server rebuilds it from the saved run).
  let branch = null; // sent with the next generate request (see htmx:config:request)
  let lastBranch = null; // what Regenerate repeats
  function chooseAlternative(k) {
    const entry = current && tokenData(current);
    const run = current && current.closest("[data-run]");
    const form = $("#generate-form");
    if (!entry || !entry[2][k] || !run.dataset.runId || !form) return;
    branch = { parent_run: run.dataset.runId, branch_index: current.dataset.i, branch_text: entry[2][k][0] };
    hideTooltip();
    form.requestSubmit();
  }
  document.addEventListener("click", (event) => {
    const row = event.target instanceof Element && event.target.closest("#tooltip button[data-k]");
    if (row) chooseAlternative(Number(row.dataset.k));
  });
  document.addEventListener("htmx:config:request", (event) => {
    if (event.target.id !== "generate-form") return;
    const body = event.detail.ctx.request.body;
    lastBranch = branch;
    if (branch) for (const [name, value] of Object.entries(branch)) body.set(name, value);
    branch = null;
  });
  window.addEventListener("resize", () => current && position($("#tooltip"), current));

  // ---------------------------------------------------------------- editor keys

  let releaseTab = false;

  function insertText(area, text) {
    // execCommand keeps the browser's undo stack; setRangeText is the fallback.
    area.focus();
    if (!document.execCommand("insertText", false, text)) {
      area.setRangeText(text, area.selectionStart, area.selectionEnd, "end");
    }
  }

  function dedent(area) {
    const start = area.value.lastIndexOf("\n", area.selectionStart - 1) + 1;
    const line = area.value.slice(start, start + INDENT.length);
    const remove = line.length - line.trimStart().length;
    if (!remove) return;
    area.setSelectionRange(start, start + Math.min(remove, INDENT.length));
    insertText(area, "");
  }

  document.addEventListener("keydown", (event) => {
    const form = $("#generate-form");
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && form) {
      event.preventDefault();
      form.requestSubmit();
      return;
    }
    if (event.key === "Escape") {
      if (inTip(document.activeElement) && current) {
        const token = current;
        hideTooltip();
        token.focus(); // back to the token whose alternatives were open (its tooltip reopens)
        return;
      }
      hideTooltip();
      const help = $("#shortcuts");
      if (help && !help.hidden) toggleHelp(false);
    }
    const area = event.target;
    if (!(area instanceof HTMLTextAreaElement) || !["id_prompt", "id_suffix"].includes(area.id)) return;
    if (event.key === "Escape") {
      releaseTab = true; // the next Tab leaves the editor, as in most code editors
      return;
    }
    if (event.key === "Tab" && !event.altKey && !event.ctrlKey && !event.metaKey) {
      if (releaseTab) {
        releaseTab = false;
        return;
      }
      event.preventDefault();
      if (event.shiftKey) dedent(area);
      else insertText(area, INDENT);
      return;
    }
    releaseTab = false;
  });

  // ---------------------------------------------------------------- keyboard shortcuts
  // Single keys, ignored while typing in a field; the help overlay (`?`) lists them.

  function toggleHelp(open) {
    const help = $("#shortcuts");
    if (!help) return;
    help.hidden = !open;
    if (open) $("button", help)?.focus();
  }

  function stepToken(delta) {
    const tokens = [...document.querySelectorAll("#result [data-run] .t")];
    if (!tokens.length) return;
    const at = tokens.indexOf(current || document.activeElement);
    const next = at < 0 ? (delta > 0 ? 0 : tokens.length - 1) : at + delta;
    tokens[Math.max(0, Math.min(tokens.length - 1, next))].focus();
  }

  const SHORTCUTS = {
    "?": () => toggleHelp($("#shortcuts")?.hidden),
    g: () => $("#generate-form")?.requestSubmit(),
    s: () => $("#stop-button:not(:disabled)")?.click(),
    r: () => { branch = lastBranch; $("#generate-form")?.requestSubmit(); },
    j: () => stepToken(1),
    k: () => stepToken(-1),
    ArrowRight: () => current && stepToken(1),
    ArrowLeft: () => current && stepToken(-1),
    a: () => $("#tooltip:not([hidden]) button")?.focus(),
    t: () => cycleTheme(),
  };

  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || !(target instanceof Element)
        || target.closest("input, textarea, select, [contenteditable]")) return;
    let action = SHORTCUTS[event.key];
    if (/^[1-5]$/.test(event.key) && current) action = () => chooseAlternative(Number(event.key) - 1);
    if (event.key === "Enter" && tokenFrom(target)) action = SHORTCUTS.a;
    if (!action) return;
    event.preventDefault();
    action();
  });

  document.addEventListener("click", (event) => {
    if (!(event.target instanceof Element)) return;
    if (event.target.closest("[data-close-help]")) toggleHelp(false);
    if (event.target.closest("#help-button")) toggleHelp(true);
    if (event.target.closest("#theme-toggle")) cycleTheme();
    const jump = event.target.closest("[data-jump]");
    if (!jump) return;
    // The confidence overview: focus the token (which opens its tooltip) and bring it into view.
    const token = jump.closest("[data-run]")?.querySelector(`.t[data-i="${jump.dataset.jump}"]`);
    if (!token) return;
    token.scrollIntoView({ block: "center" });
    token.focus({ preventScroll: true });
  });

  // ---------------------------------------------------------------- theme
  // The system setting by default; the toggle cycles dark, light and back, kept in localStorage.

  const THEMES = ["system", "dark", "light"];
  function applyTheme(theme) {
    if (theme === "system") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
    const toggle = $("#theme-toggle");
    if (toggle) toggle.textContent = "Theme: " + theme;
  }
  function cycleTheme() {
    const now = localStorage.getItem("playground-theme") || "system";
    const next = THEMES[(THEMES.indexOf(now) + 1) % THEMES.length];
    localStorage.setItem("playground-theme", next);
    applyTheme(next);
  }
  applyTheme(localStorage.getItem("playground-theme") || "system");
  document.addEventListener("DOMContentLoaded", () => applyTheme(localStorage.getItem("playground-theme") || "system"));

  // ---------------------------------------------------------------- demo mode: replay a saved run
  // The stored tokens' texts are appended in order, timed like the original stream (its time to
  // first token, then its decode time spread over the tokens), divided by the chosen speed; at
  // the end the highlighted result replaces the plain text.

  let replayTimer = 0;
  function replay() {
    const box = $("[data-replay]");
    if (!box) return;
    clearTimeout(replayTimer);
    const pieces = JSON.parse($("#replay-data").textContent);
    const out = $("#replay-text");
    const final = $(".replay-final", box);
    out.textContent = "";
    out.hidden = false;
    final.hidden = true;
    delete box.dataset.done;
    const done = () => {
      box.dataset.done = "true";
      out.hidden = true;
      final.hidden = false;
    };
    if (box.dataset.speed === "instant") {
      out.textContent = pieces.join("");
      return done();
    }
    const speed = parseFloat(box.dataset.speed) || 1;
    const total = parseFloat(box.dataset.total);
    const ttft = Math.min(parseFloat(box.dataset.ttft) || 0, 3000);
    // Without stored timings, a fixed cadence of 30 tokens a second.
    const each = total > ttft ? (total - ttft) / Math.max(pieces.length, 1) : 1000 / 30;
    const start = performance.now() + ttft / speed;
    let shown = 0;
    const tick = () => {
      const due = Math.min(pieces.length, Math.floor((performance.now() - start) / (each / speed)) + 1);
      if (due > shown) {
        out.append(pieces.slice(shown, due).join(""));
        shown = due;
      }
      if (shown >= pieces.length) return done();
      replayTimer = setTimeout(tick, Math.max(4, Math.min(50, each / speed)));
    };
    replayTimer = setTimeout(tick, Math.max(0, start - performance.now()));
  }
  document.addEventListener("DOMContentLoaded", replay);
  document.addEventListener("click", (event) => {
    if (event.target instanceof Element && event.target.closest("[data-replay-again]")) replay();
  });

  // ---------------------------------------------------------------- controls

  document.addEventListener("input", (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement)) return;
    if (input.dataset.sync) {
      const readout = document.getElementById(input.dataset.sync);
      if (readout) readout.value = input.value;
    } else if (input.classList.contains("readout") && input.id) {
      const slider = document.querySelector(`input[data-sync="${CSS.escape(input.id)}"]`);
      if (slider && input.value !== "") slider.value = input.value;
    }
  });

  // Max tokens never goes past what the context window leaves after the prompt: the model's
  // own limit from the picker, lowered by the prompt's real count when the backend can count.
  function capMaxTokens(limit) {
    for (const input of document.querySelectorAll("#id_max_tokens, input[data-sync='id_max_tokens']")) {
      input.max = limit;
      if (Number(input.value) > Number(limit)) input.value = limit;
    }
  }

  document.addEventListener("htmx:after:swap", (event) => {
    const left = event.target.id === "token-count" && $("[data-left]", event.target);
    const option = $("#id_backend")?.selectedOptions[0];
    if (!left || !option) return;
    capMaxTokens(Math.max(1, Math.min(Number(option.dataset.maxTokens), Number(left.dataset.left))));
  });

  function applyBackend(select) {
    const option = select.selectedOptions[0];
    if (!option) return;
    capMaxTokens(option.dataset.maxTokens);
    // Insert mode needs the model family's FIM format (configuration); without one it is off.
    const insert = document.querySelector("input[name='mode'][value='insert']");
    if (insert) {
      insert.disabled = option.dataset.fim !== "true";
      if (insert.disabled && insert.checked) {
        document.querySelector("input[name='mode'][value='complete']").checked = true;
        applyMode();
      }
    }
    const note = $("#backend-note");
    if (note) {
      note.textContent = option.dataset.offline === "true"
        ? "A small n-gram model trained on the Python standard library: a built-in demo, not a real code LLM."
        : "";
    }
  }

  function applyMode() {
    const insert = document.querySelector("input[name='mode'][value='insert']");
    const pane = $("#after-pane");
    if (pane && insert) pane.hidden = !insert.checked;
  }

  function applySeed(box) {
    const seed = $("#id_seed");
    if (seed) seed.disabled = box.checked;
  }

  document.addEventListener("change", (event) => {
    if (event.target.id === "id_backend") applyBackend(event.target);
    if (event.target.id === "id_seed_random") applySeed(event.target);
    if (event.target.name === "mode") {
      applyMode();
      if (event.target.value === "insert" && event.target.checked) $("#id_suffix")?.focus();
    }
  });

  // ---------------------------------------------------------------- running state

  function setRunning(running) {
    const stop = $("#stop-button");
    const live = $("#live");
    if (stop) stop.disabled = !running;
    if (live) live.setAttribute("aria-busy", String(running));
    document.body.classList.toggle("running", running);
  }

  function setStatus(text) {
    const status = $("#status");
    if (status) status.textContent = text;
  }

  document.addEventListener("htmx:before:request", (event) => {
    if (event.target.id !== "generate-form") return;
    hideTooltip();
    setRunning(true);
  });
  document.addEventListener("htmx:finally:request", (event) => {
    if (event.target.id === "generate-form") setRunning(false);
  });
  document.addEventListener("htmx:error", (event) => {
    if (event.target.id !== "generate-form") return;
    setStatus("The connection to the server failed. Your prompt and any text so far are kept; try again.");
  });
  document.addEventListener("htmx:sse:error", (event) => {
    if (event.target.id !== "generate-form") return;
    setStatus("The stream was interrupted. The text so far is kept; try again.");
  });

  document.addEventListener("click", (event) => {
    if (!(event.target instanceof Element) || !event.target.closest("#stop-button")) return;
    const form = $("#generate-form");
    if (!form || !document.body.classList.contains("running")) return;
    // Aborting the fetch closes the connection: the server's stream is cancelled and it closes
    // the upstream request. What has streamed so far stays in the live area.
    htmx.trigger(form, "htmx:abort");
    setRunning(false);
    setStatus("Stopped. The text generated so far is kept.");
  });

  document.addEventListener("DOMContentLoaded", () => {
    const select = $("#id_backend");
    if (select) applyBackend(select);
    const box = $("#id_seed_random");
    if (box) applySeed(box);
    applyMode();
  });
})();

/* Workspace (sessions, history, View code): after a Stop the run is saved once the server sees
 * the disconnect, so the history panel asks again (it listens for `playground:stopped`); Copy
 * buttons of the View code panel copy their snippet. */
(() => {
  "use strict";

  document.addEventListener("click", (event) => {
    if (!(event.target instanceof Element)) return;
    if (event.target.closest("#stop-button")) {
      document.body.dispatchEvent(new CustomEvent("playground:stopped", { bubbles: true }));
      return;
    }
    const copy = event.target.closest("[data-copy]");
    if (!copy) return;
    const code = copy.parentElement.querySelector("pre code");
    if (!code || !navigator.clipboard) return;
    navigator.clipboard.writeText(code.textContent).then(
      () => { copy.textContent = "Copied"; },
      () => { copy.textContent = "Copy failed"; },
    );
  });

  // Saved-state hint of the autosave, so a user knows the draft is safe.
  let unsaved = false;
  document.addEventListener("input", (event) => {
    if (event.target instanceof Element && event.target.closest("#generate-form")) {
      unsaved = true;
      const hint = document.getElementById("autosave");
      if (hint) hint.textContent = "Saving…";
    }
  });
  // A sign-in elsewhere renews the CSRF token: a refusal brings the new one (views.csrf_failure).
  document.addEventListener("htmx:response:error", (event) => {
    const token = event.detail.ctx.response.headers.get("X-CSRF-Renewed"); // [A-Za-z0-9]
    if (!token) return;
    document.body.setAttribute("hx-headers:inherited", `{"X-CSRFToken":"${token}"}`);
    for (const input of document.querySelectorAll("[name=csrfmiddlewaretoken]")) input.value = token;
  });
  // htmx 4 swaps error responses too. Ours are fragments made for that (out-of-band status
  // messages, field errors); a whole page, an empty body or plain text from elsewhere (a
  // proxy's 502, Django's bare 405) would land in the live output or in place of the form that
  // asked. Those are not swapped: the status line says what happened and everything stays.
  const foreign = (ctx) => {
    const type = ctx.response.headers.get("Content-Type") || "";
    const text = (ctx.text || "").trimStart().slice(0, 15).toLowerCase();
    return !type.startsWith("text/html") || !text || text.startsWith("<!doctype") || text.startsWith("<html");
  };
  document.addEventListener("htmx:before:swap", (event) => {
    const ctx = event.detail.ctx;
    if (!ctx.response || ctx.response.status < 400 || !foreign(ctx)) return;
    event.preventDefault();
    const reason = [ctx.response.status, ctx.response.raw && ctx.response.raw.statusText].filter(Boolean).join(" ");
    // The editor and the compare page make htmx requests; each has one status line (as in
    // page.html#request-failed, which our own failures fill).
    const where = document.getElementById("status") || document.getElementById("compare-status");
    if (where) where.textContent = `The server could not answer (${reason}). Nothing changed: try again.`;
  });
  // A restore must be the editor's last write (an autosave of the old text would undo it): it
  // queues behind one in flight (hx-sync) and, unless it fails, no autosave follows it.
  let restoring = false;
  const isRestore = (el) => el instanceof Element && el.matches("form[data-restore]");
  document.addEventListener("htmx:config:request", (event) => { if (isRestore(event.target)) restoring = true; });
  document.addEventListener("htmx:before:request", (event) => {
    if (restoring && event.target.id === "autosave") event.preventDefault();
  });
  document.addEventListener("htmx:finally:request", (event) => {
    const response = event.detail.ctx.response;
    if (isRestore(event.target) && !(response && response.status < 400)) restoring = false;
  });
  document.addEventListener("htmx:after:request", (event) => {
    const target = event.target;
    if (!(target instanceof Element) || target.id !== "autosave") return;
    const ok = event.detail && event.detail.ctx && event.detail.ctx.response
      ? event.detail.ctx.response.status < 400 : true;
    if (ok) unsaved = false;
    target.textContent = ok ? "Draft saved" : "Draft not saved";
  });
  // Leaving within the autosave's debounce would lose the last keystrokes: send them now. The
  // form carries its CSRF token as a field, which is what a beacon (no headers) can send.
  document.addEventListener("visibilitychange", () => {
    const form = document.getElementById("generate-form");
    const hint = document.getElementById("autosave");
    if (document.visibilityState !== "hidden" || !unsaved || restoring || !form || !hint) return;
    navigator.sendBeacon(hint.getAttribute("hx-post"), new FormData(form));
    unsaved = false;
  });
})();
