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
  const runData = new WeakMap(); // run element -> parsed token data, parsed on first hover

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

  function tokenData(tokenEl) {
    const run = tokenEl.closest("[data-run]");
    if (!run) return null;
    if (!runData.has(run)) {
      const script = $("script.run-data", run);
      let parsed = [];
      try {
        parsed = script ? JSON.parse(script.textContent) : [];
      } catch (err) {
        parsed = [];
      }
      runData.set(run, parsed);
    }
    return runData.get(run)[Number(tokenEl.dataset.i)] || null;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
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
      const list = el("ol", "tt-alts");
      list.setAttribute("aria-label", "Top alternatives");
      let chosenListed = false;
      for (const [altText, altLogprob] of alternatives) {
        const item = el("li", "tt-alt");
        const chosen = altText === text;
        if (chosen) {
          item.classList.add("chosen");
          chosenListed = true;
        }
        const bar = el("span", "tt-bar");
        bar.style.setProperty("--p", Math.exp(altLogprob).toFixed(4));
        item.append(el("code", "tt-alt-token", visible(altText)), bar,
          el("span", "tt-alt-prob", percent(altLogprob)));
        if (chosen) item.append(el("span", "tt-chosen", "chosen"));
        list.append(item);
      }
      tip.append(list);
      if (!chosenListed) {
        tip.append(el("p", "tt-note", "The chosen token was not among the top alternatives."));
      }
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
    let top = box.bottom + margin;
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
  document.addEventListener("mouseout", (event) => {
    const token = tokenFrom(event.target);
    if (token && token === current && !token.contains(event.relatedTarget)
        && document.activeElement !== token) hideTooltip();
  });
  document.addEventListener("focusin", (event) => {
    const token = tokenFrom(event.target);
    if (token) showTooltip(token);
  });
  document.addEventListener("focusout", (event) => {
    if (tokenFrom(event.target) === current) hideTooltip();
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
      hideTooltip();
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

  function applyBackend(select) {
    const option = select.selectedOptions[0];
    if (!option) return;
    const max = option.dataset.maxTokens;
    for (const input of document.querySelectorAll("#id_max_tokens, input[data-sync='id_max_tokens']")) {
      input.max = max;
    }
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
    if (document.visibilityState !== "hidden" || !unsaved || !form || !hint) return;
    navigator.sendBeacon(hint.getAttribute("hx-post"), new FormData(form));
    unsaved = false;
  });
})();
