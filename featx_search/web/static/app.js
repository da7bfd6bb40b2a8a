// The featx-search page: search by a dropped, pasted or picked photo, "similar" on every
// result, browsing, duplicate review and library status, over the JSON API of this server.
// The query lives in the URL fragment, so back/forward and reload work; an uploaded image
// cannot live in a URL, so it is kept in this tab (memory and sessionStorage) under an id.
"use strict";

const PAGE = 40; // results asked for at a time
const THUMB = 256;
const DUPS_PAGE = 20;
const MAX_OFFSET = 10000; // the API's largest offset for ranked queries
const $ = (id) => document.getElementById(id);

const uploads = new Map(); // upload id -> Blob, for this tab
let info = null; // the last GET /api/info
let infoTimer = null;

// -- talking to the server ------------------------------------------------------------------

async function api(url, options = {}) {
  const answer = await fetch(url, { credentials: "same-origin", ...options });
  const type = answer.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await answer.json() : null;
  if (!answer.ok) {
    const text = body && body.error ? body.error : `${answer.status} ${answer.statusText}`;
    const hint = body && body.hint ? ` (${body.hint})` : "";
    throw new Error(text + hint);
  }
  return body;
}

function showError(err) {
  $("message-text").textContent = err instanceof Error ? err.message : String(err);
  $("message").hidden = false;
}

function clearError() {
  $("message").hidden = true;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const thumbUrl = (id, size = THUMB) => `/api/images/${id}/thumbnail?size=${size}`;
const fileUrl = (id) => `/api/images/${id}/file`;

// -- the URL fragment is the state -----------------------------------------------------------

function state() {
  return new URLSearchParams(location.hash.slice(1));
}

function go(params, replace = false) {
  const text = params.toString().replace(/=(&|$)/g, "$1"); // "#dups", not "#dups="
  const url = text ? `#${text}` : location.pathname + location.search;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

function filtersFrom(params) {
  const kept = new URLSearchParams();
  for (const name of ["space", "under", "after", "before"]) {
    if (params.get(name)) kept.set(name, params.get(name));
  }
  return kept;
}

function render() {
  clearError();
  closeViewer();
  const params = state();
  const view = params.has("dups") ? "dups" : params.has("status") ? "status" : "search";
  for (const name of ["search", "dups", "status"]) $(`${name}-view`).hidden = name !== view;
  for (const tab of document.querySelectorAll(".tabs a")) {
    tab.classList.toggle("active", tab.dataset.view === view);
  }
  if (view === "dups") dups.show(params);
  else if (view === "status") showStatus();
  else results.show(params);
}

// -- uploads kept in the tab -----------------------------------------------------------------

function uploadKey(id) {
  return `featx-upload-${id}`;
}

function keepUpload(blob) {
  const id = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  uploads.set(id, blob);
  const reader = new FileReader();
  reader.onload = () => {
    try {
      sessionStorage.setItem(uploadKey(id), reader.result);
    } catch (err) {
      // Too big for sessionStorage: the image still works until the tab is reloaded.
    }
  };
  reader.readAsDataURL(blob);
  return id;
}

function findUpload(id) {
  if (uploads.has(id)) return uploads.get(id);
  const stored = sessionStorage.getItem(uploadKey(id));
  if (!stored) return null;
  const [head, data] = stored.split(",", 2);
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const blob = new Blob([bytes], { type: head.slice(5).split(";")[0] });
  uploads.set(id, blob);
  return blob;
}

function searchWith(file) {
  if (!file || !file.type.startsWith("image/")) {
    showError(`not an image: ${file ? file.name || file.type : "nothing"} was given`);
    return;
  }
  const params = filtersFrom(state());
  params.set("upload", keepUpload(file));
  go(params);
}

// -- the results grid ------------------------------------------------------------------------

const results = {
  params: null,
  offset: 0,
  total: null,
  ended: false,
  loading: false,
  generation: 0,
  selected: -1,
  queryUrl: null,

  show(params) {
    this.params = params;
    this.offset = 0;
    this.total = null;
    this.ended = false;
    this.loading = false;
    this.generation += 1;
    this.selected = -1;
    $("grid").replaceChildren();
    $("grid").dataset.query = location.hash; // which query the grid shows (for tests, too)
    $("summary").textContent = "";
    this.fillFilters(params);
    this.showQuery(params);
    this.more();
  },

  fillFilters(params) {
    const form = $("filters");
    for (const name of ["under", "after", "before"]) form.elements[name].value = params.get(name) || "";
    if (params.get("space")) $("space").value = params.get("space");
  },

  showQuery(params) {
    const image = $("query-image");
    if (this.queryUrl) URL.revokeObjectURL(this.queryUrl);
    this.queryUrl = null;
    if (params.get("upload")) {
      const blob = findUpload(params.get("upload"));
      if (blob) this.queryUrl = image.src = URL.createObjectURL(blob);
      image.hidden = !blob;
    } else if (params.get("similar")) {
      image.src = thumbUrl(params.get("similar"), 128);
      image.hidden = false;
    } else {
      image.hidden = true;
      image.removeAttribute("src");
    }
  },

  async fetchPage(params, offset) {
    const space = params.get("space");
    if (params.get("upload")) {
      const blob = findUpload(params.get("upload"));
      if (!blob) throw new Error("the uploaded image is no longer kept in this tab; drop it again");
      const form = new FormData();
      form.append("image", blob, blob.name || "upload");
      form.append("k", String(PAGE));
      form.append("offset", String(offset));
      for (const name of ["under", "after", "before"]) {
        if (params.get(name)) form.append(name, params.get(name));
      }
      if (space) form.append("space_id", space);
      return api("/api/search", { method: "POST", body: form });
    }
    const query = new URLSearchParams({ offset: String(offset) });
    if (space) query.set("space_id", space);
    if (params.get("similar")) {
      query.set("k", String(PAGE));
      return api(`/api/images/${encodeURIComponent(params.get("similar"))}/similar?${query}`);
    }
    query.set("limit", String(PAGE));
    for (const name of ["under", "after", "before"]) {
      if (params.get(name)) query.set(name, params.get(name));
    }
    return api(`/api/images?${query}`);
  },

  async more() {
    if (this.loading || this.ended) return;
    const generation = this.generation;
    this.loading = true;
    $("grid").setAttribute("aria-busy", "true");
    $("more").textContent = "loading…";
    try {
      const page = await this.fetchPage(this.params, this.offset);
      if (generation !== this.generation) return;
      this.offset += page.results.length;
      this.total = page.total;
      this.ended = !page.more || page.results.length === 0 || this.offset + PAGE > MAX_OFFSET;
      for (const row of page.results) $("grid").append(this.card(row));
      this.describe();
      if (this.selected < 0 && page.results.length) this.select(0, false);
    } catch (err) {
      if (generation === this.generation) {
        showError(err);
        this.ended = true; // stop asking until the query changes
      }
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        $("grid").setAttribute("aria-busy", "false");
        $("more").textContent = this.ended ? "" : "more below…";
        // A short first page leaves the sentinel in view: keep filling.
        requestAnimationFrame(() => {
          if (generation === this.generation && sentinelVisible()) this.more();
        });
      }
    }
  },

  describe() {
    const params = this.params;
    const what = params.get("upload")
      ? "most like the uploaded photo"
      : params.get("similar")
        ? `most like image ${params.get("similar")}`
        : "in the library, by path";
    $("summary").textContent = `${this.offset} of ${this.total} photos ${what}`;
  },

  card(row) {
    const id = row.image_id;
    const image = el("img", {
      src: thumbUrl(id),
      loading: "lazy",
      alt: row.path,
      width: THUMB,
      height: THUMB,
    });
    const similar = el("button", { type: "button", class: "similar", data: { id } }, "similar");
    const name = row.path.split("/").pop();
    const caption = el("figcaption", {}, el("span", { class: "path", title: row.path }, name), similar);
    const card = el("figure", { class: "card", tabIndex: -1, data: { id, path: row.path } }, image, caption);
    if (typeof row.score === "number") {
      card.prepend(el("span", { class: "score", title: "cosine similarity" }, row.score.toFixed(3)));
    }
    return card;
  },

  cards() {
    return Array.from($("grid").children);
  },

  select(index, focus = true) {
    const cards = this.cards();
    if (!cards.length) return;
    index = Math.max(0, Math.min(cards.length - 1, index));
    if (cards[this.selected]) cards[this.selected].classList.remove("selected");
    this.selected = index;
    cards[index].classList.add("selected");
    if (focus) {
      cards[index].focus({ preventScroll: true });
      cards[index].scrollIntoView({ block: "nearest" });
    }
    if (!$("viewer").hidden) openViewer(cards[index]);
  },

  columns() {
    const cards = this.cards();
    if (!cards.length) return 1;
    const top = cards[0].offsetTop;
    const n = cards.findIndex((c) => c.offsetTop !== top);
    return n < 0 ? cards.length : n;
  },

  similarTo(id) {
    const params = filtersFrom(this.params || state());
    params.set("similar", String(id));
    go(params);
  },

  key(event) {
    const cards = this.cards();
    const step = { ArrowRight: 1, ArrowLeft: -1, j: 1, k: -1, ArrowDown: this.columns(), ArrowUp: -this.columns() }[event.key];
    if (step !== undefined) {
      this.select(this.selected < 0 ? 0 : this.selected + step);
      if (this.selected >= cards.length - this.columns()) this.more();
      return true;
    }
    const card = cards[this.selected];
    if (!card) return false;
    if (event.key === "Enter") {
      openViewer(card);
      return true;
    }
    if (event.key === "s") {
      this.similarTo(card.dataset.id);
      return true;
    }
    return false;
  },
};

function sentinelVisible() {
  const box = $("more").getBoundingClientRect();
  return !$("search-view").hidden && box.top < window.innerHeight + 400;
}

function openViewer(card) {
  $("viewer-image").src = fileUrl(card.dataset.id);
  $("viewer-image").alt = card.dataset.path;
  $("viewer-caption").textContent = card.dataset.path;
  $("viewer").hidden = false;
}

function closeViewer() {
  $("viewer").hidden = true;
  $("viewer-image").removeAttribute("src");
}

// -- duplicates ------------------------------------------------------------------------------

const dups = {
  groups: [], // {group, decision, node}
  current: 0,
  unloaded: null, // groups on the server after the loaded ones (null: not asked yet)
  threshold: "0.9",
  undecided: true,
  loading: false,
  generation: 0,
  done: [], // decisions made here, newest last, for undo

  show(params) {
    this.threshold = params.get("threshold") || "0.9";
    $("threshold").value = this.threshold;
    $("threshold-value").textContent = Number(this.threshold).toFixed(3);
    this.undecided = $("undecided").checked;
    this.reload();
  },

  reload() {
    this.groups = [];
    this.current = 0;
    this.unloaded = null;
    this.loading = false;
    this.generation += 1;
    $("groups").replaceChildren();
    $("dups-summary").textContent = "";
    this.more();
  },

  async more() {
    if (this.loading || this.unloaded === 0) return;
    const generation = this.generation;
    this.loading = true;
    $("dups-more").textContent = "loading…";
    const offset = this.offsetOnServer();
    const query = new URLSearchParams({
      threshold: this.threshold,
      offset: String(offset),
      limit: String(DUPS_PAGE),
    });
    if (this.undecided) query.set("undecided", "1");
    const space = state().get("space");
    if (space) query.set("space_id", space);
    try {
      const page = await api(`/api/dups?${query}`);
      if (generation !== this.generation) return;
      this.unloaded = page.groups.length ? Math.max(0, page.total - offset - page.groups.length) : 0;
      for (const group of page.groups) {
        const entry = { group, decision: group.decision || null, node: null };
        entry.node = this.groupNode(entry, this.groups.length);
        this.groups.push(entry);
        $("groups").append(entry.node);
      }
      if (this.groups.length && !this.groups.some((g) => g.node.classList.contains("current"))) {
        this.focus(0);
      }
      this.describe();
    } catch (err) {
      if (generation === this.generation) {
        showError(err);
        this.unloaded = 0;
      }
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        $("dups-more").textContent = this.unloaded ? "more below…" : "";
      }
    }
  },

  // Groups decided here drop out of an undecided listing on the server.
  offsetOnServer() {
    const decided = this.undecided ? this.groups.filter((g) => g.decision && !g.group.decision).length : 0;
    return this.groups.length - decided;
  },

  describe() {
    const listed = this.groups.length + (this.unloaded ?? 0);
    const open = this.groups.filter((g) => !g.decision).length + (this.unloaded ?? 0);
    const threshold = Number(this.threshold).toFixed(3);
    $("dups-summary").textContent =
      `${open} of ${listed} group${listed === 1 ? "" : "s"} undecided at threshold ${threshold}` +
      (this.undecided ? " (groups decided earlier are hidden)" : "");
  },

  groupNode(entry, index) {
    const members = entry.group.members.map((m, i) =>
      el(
        "figure",
        { class: "member" + (m.keeper ? " keeper" : ""), data: { id: m.image_id, index: i } },
        el("img", { src: thumbUrl(m.image_id), loading: "lazy", alt: m.path, width: THUMB, height: THUMB }),
        el(
          "figcaption",
          {},
          el("span", { class: "number" }, String(i + 1)),
          el("span", { class: "path", title: m.path }, m.path.split("/").pop()),
          el(
            "small",
            {},
            `${m.width ?? "?"}×${m.height ?? "?"} · ${(m.date || "").slice(0, 10)} · ${m.score.toFixed(3)}` +
              (m.keeper ? " · suggested keeper" : ""),
          ),
          el("button", { type: "button", class: "keep", data: { group: index, index: i } }, "keep this"),
        ),
      ),
    );
    const head = el(
      "div",
      { class: "group-head" },
      el("span", {}, `group ${entry.group.rank} · ${entry.group.members.length} photos`),
      el("span", { class: "verdict" }),
      el("button", { type: "button", class: "distinct", data: { group: index } }, "not duplicates"),
    );
    const node = el("section", { class: "group", data: { index } }, head, el("div", { class: "members" }, ...members));
    this.paint(entry, node);
    return node;
  },

  paint(entry, node = entry.node) {
    const decision = entry.decision;
    node.classList.toggle("decided", Boolean(decision));
    let text = "";
    if (decision && decision.decision === "distinct") text = "not duplicates";
    else if (decision) {
      const kept = entry.group.members.find((m) => m.image_id === decision.keep);
      text = `keep ${kept ? kept.path.split("/").pop() : decision.keep}`;
    }
    node.querySelector(".verdict").textContent = text;
    for (const member of node.querySelectorAll(".member")) {
      const id = Number(member.dataset.id);
      member.classList.toggle("kept", Boolean(decision && decision.keep === id));
    }
  },

  focus(index) {
    if (!this.groups.length) return;
    index = Math.max(0, Math.min(this.groups.length - 1, index));
    if (this.groups[this.current]) this.groups[this.current].node.classList.remove("current");
    this.current = index;
    const node = this.groups[index].node;
    node.classList.add("current");
    node.scrollIntoView({ block: "nearest" });
    if (index >= this.groups.length - 2) this.more();
  },

  next() {
    const after = this.groups.findIndex((g, i) => i > this.current && !g.decision);
    this.focus(after >= 0 ? after : this.current + 1);
  },

  async decide(index, body) {
    const entry = this.groups[index];
    if (!entry) return;
    body.image_ids = entry.group.members.map((m) => m.image_id);
    try {
      if (entry.decision) await this.forget(entry);
      const stored = await api("/api/dups/decisions", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
      entry.decision = stored;
      this.done.push(entry);
      this.paint(entry);
      this.describe();
      if (index === this.current) this.next();
    } catch (err) {
      showError(err);
    }
  },

  keep(index, member) {
    const entry = this.groups[index];
    if (!entry || !entry.group.members[member]) return;
    this.decide(index, { decision: "keep", keep: entry.group.members[member].image_id });
  },

  async forget(entry) {
    await api(`/api/dups/decisions/${encodeURIComponent(entry.decision.id)}`, { method: "DELETE" });
    entry.decision = null;
    entry.group.decision = null;
    this.paint(entry);
  },

  async undo() {
    const entry = this.done.pop();
    if (!entry || !entry.decision) return;
    try {
      await this.forget(entry);
      this.focus(this.groups.indexOf(entry));
      this.describe();
    } catch (err) {
      this.done.push(entry);
      showError(err);
    }
  },

  key(event) {
    const k = event.key;
    if (k === "k") this.keep(this.current, 0);
    else if (/^[1-9]$/.test(k)) this.keep(this.current, Number(k) - 1);
    else if (k === "n") this.decide(this.current, { decision: "distinct" });
    else if (k === "ArrowRight" || k === " " || k === "j") this.focus(this.current + 1);
    else if (k === "ArrowLeft") this.focus(this.current - 1);
    else if (k === "u") this.undo();
    else return false;
    return true;
  },
};

// -- status ----------------------------------------------------------------------------------

async function loadInfo() {
  try {
    info = await api("/api/info");
  } catch (err) {
    showError(err);
    return;
  }
  const spaces = info.spaces || [];
  const select = $("space");
  const chosen = state().get("space") || select.value;
  select.replaceChildren(
    ...spaces.map((s) => el("option", { value: String(s.id) }, `${s.id}: ${s.label} (${s.count})`)),
  );
  if (chosen) select.value = chosen;
  $("space-label").hidden = spaces.length < 2;
  showProgress();
  if (!$("status-view").hidden) paintStatus();
  // Every 2 s while an index run goes on, or while the status view is open (to see one start).
  clearTimeout(infoTimer);
  if (info.indexing || !$("status-view").hidden) infoTimer = setTimeout(loadInfo, 2000);
}

function showProgress() {
  const run = info && info.indexing;
  for (const bar of [$("indexing"), $("status-bar")]) {
    if (run && run.total) {
      bar.max = run.total;
      bar.value = run.done;
    } else {
      bar.removeAttribute("value");
    }
  }
  $("indexing").hidden = !run;
  $("status-progress").hidden = !run;
  if (run) {
    const failed = run.failed ? `, ${run.failed} failed` : "";
    const text = `${run.phase || "indexing"}: ${run.done} of ${run.total || "?"}${failed}`;
    $("indexing").title = text;
    $("status-bar-text").textContent = text;
  }
}

function showStatus() {
  if (info) paintStatus();
  loadInfo();
}

function paintStatus() {
  const facts = [["library", info.path], ["schema", info.revision || "none"]];
  const images = { indexed: 0, failed: 0, ...(info.images || {}) };
  for (const [status, count] of Object.entries(images)) facts.push([`images ${status}`, count]);
  $("status-facts").replaceChildren(
    ...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, String(value))]),
  );
  $("spaces").tBodies[0].replaceChildren(
    ...(info.spaces || []).map((s) =>
      el(
        "tr",
        {},
        el("td", {}, String(s.id)),
        el("td", {}, s.label),
        el("td", {}, String(s.count)),
        el("td", {}, String(s.dim)),
        el("td", {}, s.index_kind || "none"),
        el("td", {}, s.index_current ? "yes" : "stale"),
      ),
    ),
  );
  showProgress();
  $("failures-box").hidden = !images.failed;
  if (images.failed) loadFailures();
}

async function loadFailures() {
  let answer;
  try {
    answer = await api("/api/failures?limit=200");
  } catch (err) {
    showError(err);
    return;
  }
  const shown = answer.failures.length;
  $("failures-summary").textContent =
    shown < answer.total ? `the first ${shown} of ${answer.total}` : `${answer.total} files`;
  $("failures").tBodies[0].replaceChildren(
    ...answer.failures.map((f) => el("tr", {}, el("td", {}, f.path), el("td", {}, f.error))),
  );
}

// -- wiring ----------------------------------------------------------------------------------

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName))
    && !(target instanceof HTMLInputElement && ["checkbox", "file"].includes(target.type));
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "Escape") {
    closeViewer();
    $("help").hidden = true;
    return;
  }
  if (typing(event.target)) return;
  if (event.key === "?") {
    $("help").hidden = !$("help").hidden;
    event.preventDefault();
    return;
  }
  const handled = !$("dups-view").hidden
    ? dups.key(event)
    : !$("search-view").hidden && results.key(event);
  if (handled) event.preventDefault();
}

function firstImage(items) {
  for (const item of items || []) {
    const file = item instanceof File ? item : item.kind === "file" ? item.getAsFile() : null;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function wire() {
  document.addEventListener("keydown", onKey);
  window.addEventListener("popstate", render);

  const drop = $("drop");
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("hover");
  });
  document.addEventListener("dragleave", (event) => {
    if (event.relatedTarget === null) drop.classList.remove("hover");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("hover");
    const files = event.dataTransfer ? Array.from(event.dataTransfer.files) : [];
    const file = firstImage(files);
    if (file) searchWith(file);
    else showError("drop an image file (JPEG, PNG, …)");
  });
  document.addEventListener("paste", (event) => {
    if (typing(event.target)) return;
    const file = firstImage(event.clipboardData ? Array.from(event.clipboardData.items) : []);
    if (file) {
      event.preventDefault();
      searchWith(file);
    }
  });
  $("picker").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) searchWith(file);
  });

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const current = state();
    const params = new URLSearchParams();
    for (const name of ["upload", "similar"]) if (current.get(name)) params.set(name, current.get(name));
    const form = $("filters").elements;
    for (const name of ["under", "after", "before"]) if (form[name].value) params.set(name, form[name].value.trim());
    if (!$("space-label").hidden && $("space").value) params.set("space", $("space").value);
    go(params);
  });
  $("space").addEventListener("change", () => $("filters").requestSubmit());
  $("clear").addEventListener("click", () => go(new URLSearchParams()));

  $("grid").addEventListener("click", (event) => {
    const card = event.target.closest(".card");
    if (!card) return;
    if (event.target.closest("button.similar")) {
      results.similarTo(card.dataset.id);
      return;
    }
    results.select(results.cards().indexOf(card));
    if (event.target.tagName === "IMG") openViewer(card);
  });
  $("viewer").addEventListener("click", closeViewer);
  $("help").addEventListener("click", () => ($("help").hidden = true));
  $("help-button").addEventListener("click", () => ($("help").hidden = !$("help").hidden));
  $("message-close").addEventListener("click", clearError);

  new IntersectionObserver((entries) => {
    if (!entries.some((e) => e.isIntersecting)) return;
    if (!$("search-view").hidden) results.more();
    else if (!$("dups-view").hidden) dups.more();
  }, { rootMargin: "400px" }).observe($("more"));
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !$("dups-view").hidden) dups.more();
  }, { rootMargin: "400px" }).observe($("dups-more"));

  let pending = null;
  $("threshold").addEventListener("input", () => {
    $("threshold-value").textContent = Number($("threshold").value).toFixed(3);
    clearTimeout(pending);
    pending = setTimeout(() => {
      const params = state();
      params.set("threshold", $("threshold").value);
      go(params, true);
    }, 350);
  });
  $("undecided").addEventListener("change", () => {
    dups.undecided = $("undecided").checked;
    dups.reload();
  });
  $("groups").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    const index = Number(button.dataset.group);
    if (button.classList.contains("keep")) dups.keep(index, Number(button.dataset.index));
    else if (button.classList.contains("distinct")) dups.decide(index, { decision: "distinct" });
    dups.focus(index);
  });
  for (const tab of document.querySelectorAll(".tabs a, a.brand")) {
    tab.addEventListener("click", (event) => {
      event.preventDefault();
      const view = tab.dataset.view || "search";
      const params = filtersFrom(state());
      if (view !== "search") params.set(view, "");
      go(params);
    });
  }
}

wire();
loadInfo();
render();
