// The web console: plain JavaScript, no build step, no external assets. It uses the same /v1 API
// as any client. The API key lives in sessionStorage (this tab only) and is sent in the
// Authorization header, never in a URL; that is also why live progress is read with fetch()
// rather than EventSource, which cannot send headers.
"use strict";

const KEY_STORAGE = "mtl.apiKey";
const ALGORITHMS = ["mtl-reptile", "mtl-fomaml", "mtl-maml", "mtl-protonet", "reptile", "fomaml",
  "maml", "protonet", "transfer"];
const PHASE_TEXT = {
  queued: "Queued: waiting for a worker",
  preparing: "Preparing: loading the base model and the images",
  choosing_base_model: "Choosing the base model: scoring each ready one on this dataset",
  holdout_pass: "Holdout pass: training on the training split to measure accuracy",
  final_pass: "Final pass: training again on every image (the loss starts high again)",
  pretraining: "Pretraining",
  saving: "Saving the trained model",
};
const FINISHED = ["succeeded", "failed", "cancelled"];

const state = { key: null, admin: false, abort: new AbortController() };

// ------------------------------------------------------------------------------------ helpers

/** A DOM element; children are nodes or text (text is never parsed as HTML). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(node.style, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function toast(message) {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 4000);
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;
const badge = (status) => el("span", { class: `badge ${status}` }, status);

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** Call the API with the key; JSON in and out. A 401 signs the user out. */
async function api(path, { method = "GET", json, form, signal } = {}) {
  const headers = { Authorization: `Bearer ${state.key}` };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const res = await fetch(path, { method, headers, body, signal: signal || state.abort.signal });
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({ detail: `${res.status} ${res.statusText}` }));
  if (!res.ok) {
    if (res.status === 401 && state.key) signOut(data.detail);
    throw new ApiError(res.status, data.detail || res.statusText);
  }
  return data;
}

/** An image of the API as an object URL (an <img src> cannot send the Authorization header). */
async function imageUrl(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${state.key}` },
    signal: state.abort.signal });
  if (!res.ok) throw new ApiError(res.status, res.statusText);
  return URL.createObjectURL(await res.blob());
}

/**
 * Follow a job's server-sent events (GET /v1/jobs/{id}/events), calling onJob(job) for each
 * `job` event, until the job has finished or the page is left. Reconnects after a dropped stream.
 */
async function followJob(jobId, onJob) {
  const signal = state.abort.signal;
  while (!signal.aborted) {
    let last = null;
    try {
      const res = await fetch(`/v1/jobs/${jobId}/events`, {
        headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" }, signal,
      });
      if (!res.ok) throw new ApiError(res.status, (await res.json()).detail);
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (event === "job" && data.length) {
            last = JSON.parse(data.join("\n"));
            onJob(last);
          }
        }
      }
      if (last && FINISHED.includes(last.status)) return last;
    } catch (err) {
      if (signal.aborted) return null;
      if (err instanceof ApiError && err.status < 500) throw err;
    }
    await new Promise((r) => setTimeout(r, 2000)); // dropped: reconnect, as EventSource would
  }
  return null;
}

/**
 * Every item of a paged list route (GET /v1/datasets, /v1/classifiers, ...), following each
 * page's `next_cursor` until the last page.
 */
async function listAll(path) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(`${path}${sep}limit=500${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.data);
    cursor = page.next_cursor;
  } while (cursor);
  return items;
}

// ------------------------------------------------------------------------------------ sign-in

async function signIn(key) {
  state.key = key;
  try {
    await api("/v1/base-models?limit=1");
  } catch (err) {
    state.key = null;
    throw err;
  }
  // A user key gets 403 here: only admins see the admin page.
  try {
    await api("/v1/admin/api-keys?limit=1");
    state.admin = true;
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 403) throw err;
    state.admin = false;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.admin = false;
  document.getElementById("sign-in-error").textContent = reason || "";
  render();
}

// ------------------------------------------------------------------------------------ zip

// A folder is sent as a zip (stored, not compressed) built here, so that it goes through exactly
// the checks an uploaded zip does and every rejected file is reported by the server.
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

async function zipFiles(entries) {
  const encoder = new TextEncoder();
  const parts = [];
  const central = [];
  let offset = 0;
  for (const { path, file } of entries) {
    const name = encoder.encode(path);
    const data = new Uint8Array(await file.arrayBuffer());
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    local.setUint32(0, 0x04034b50, true);
    local.setUint16(4, 20, true);
    local.setUint16(6, 0x0800, true); // names are UTF-8
    local.setUint16(12, 0x21, true); // 1980-01-01
    local.setUint32(14, crc, true);
    local.setUint32(18, data.length, true);
    local.setUint32(22, data.length, true);
    local.setUint16(26, name.length, true);
    parts.push(local, name, data);
    const entry = new DataView(new ArrayBuffer(46));
    entry.setUint32(0, 0x02014b50, true);
    entry.setUint16(4, 20, true);
    entry.setUint16(6, 20, true);
    entry.setUint16(8, 0x0800, true);
    entry.setUint16(14, 0x21, true);
    entry.setUint32(16, crc, true);
    entry.setUint32(20, data.length, true);
    entry.setUint32(24, data.length, true);
    entry.setUint16(28, name.length, true);
    entry.setUint32(42, offset, true);
    central.push(entry, name);
    offset += 30 + name.length + data.length;
  }
  const size = central.reduce((sum, p) => sum + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  end.setUint32(0, 0x06054b50, true);
  end.setUint16(8, entries.length, true);
  end.setUint16(10, entries.length, true);
  end.setUint32(12, size, true);
  end.setUint32(16, offset, true);
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

/** Files of a dropped folder, with their paths, walking its sub-folders. */
async function walkEntry(entry, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ path: entry.fullPath.replace(/^\//, ""), file });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
      if (!batch.length) break;
      for (const child of batch) await walkEntry(child, out);
    }
  }
}

// ------------------------------------------------------------------------------------ datasets

async function datasetsPage(page, selectedId) {
  const list = el("ul", { class: "list", id: "dataset-list" });
  const detail = el("div", { id: "dataset-detail" });
  const error = el("p", { class: "error", role: "alert" });
  const name = el("input", { type: "text", id: "dataset-name", placeholder: "e.g. glyphs" });
  const zipInput = el("input", { type: "file", accept: ".zip,application/zip", id: "zip-input", hidden: true });
  const folderInput = el("input", { type: "file", id: "folder-input", webkitdirectory: true, multiple: true, hidden: true });
  const zone = el("div", { class: "dropzone", id: "dropzone" },
    el("div", {}, el("b", {}, "Drop a .zip or a folder of class folders here")),
    el("div", { class: "hint" }, "Each sub-folder is a class: glyphs/alpha/1.png, glyphs/beta/1.png, …"),
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "secondary", onclick: () => zipInput.click() }, "Choose a zip…"),
      el("button", { type: "button", class: "secondary", onclick: () => folderInput.click() }, "Choose a folder…")),
    zipInput, folderInput);

  async function upload(kind, payload, suggestedName) {
    error.textContent = "";
    const form = new FormData();
    form.append("name", name.value.trim() || suggestedName || "dataset");
    zone.classList.add("over");
    zone.firstChild.textContent = "Uploading…";
    try {
      const archive = kind === "zip" ? payload : await zipFiles(payload);
      form.append("archive", archive, kind === "zip" ? payload.name : `${suggestedName}.zip`);
      const ds = await api("/v1/datasets", { method: "POST", form });
      toast(`Dataset “${ds.name}”: ${ds.num_images} images in ${ds.classes.length} classes` +
        (ds.rejected.length ? `, ${ds.rejected.length} rejected` : ""));
      location.hash = `#/datasets/${ds.id}`;
    } catch (err) {
      error.textContent = err.message;
    } finally {
      zone.classList.remove("over");
      zone.firstChild.textContent = "Drop a .zip or a folder of class folders here";
    }
  }

  zipInput.addEventListener("change", () => {
    const file = zipInput.files[0];
    if (file) upload("zip", file, file.name.replace(/\.zip$/i, ""));
  });
  folderInput.addEventListener("change", () => {
    const files = [...folderInput.files].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }));
    if (files.length) upload("folder", files, files[0].path.split("/")[0]);
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", async (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const items = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
    const files = [...e.dataTransfer.files];
    if (files.length === 1 && /\.zip$/i.test(files[0].name) && !(items[0] && items[0].isDirectory)) {
      upload("zip", files[0], files[0].name.replace(/\.zip$/i, ""));
      return;
    }
    const entries = [];
    for (const entry of items) if (entry) await walkEntry(entry, entries);
    if (!entries.length) { error.textContent = "drop a .zip file or a folder"; return; }
    const root = items.length === 1 && items[0].isDirectory ? items[0].name : "dataset";
    upload("folder", entries, root);
  });

  page.append(el("div", { class: "cols" },
    el("div", {},
      el("div", { class: "card" }, el("h2", {}, "New dataset"),
        el("label", {}, "Name", name), zone, error),
      el("div", { class: "card" }, el("h2", {}, "Your datasets"), list)),
    detail));

  const datasets = await listAll("/v1/datasets");
  if (!datasets.length) list.append(el("li", { class: "muted" }, "None yet: upload one."));
  const current = datasets.find((d) => d.id === selectedId) || datasets[datasets.length - 1];
  for (const ds of datasets.slice().reverse()) {
    list.append(el("li", {}, el("a", { href: `#/datasets/${ds.id}`, class: ds === current ? "active" : "" },
      el("span", {}, ds.name), el("span", { class: "muted" }, `${ds.num_images} images`))));
  }
  if (current) await datasetDetail(detail, current);
  else detail.append(el("div", { class: "card" }, el("h2", {}, "Start here"),
    el("p", {}, "Upload a few labelled images per class (5 to 20 is plenty): a zip or a folder whose " +
      "sub-folders are the class names. Then train a classifier on it from a pretrained base model.")));
}

async function datasetDetail(box, ds) {
  const classes = el("tbody");
  const editor = el("div", { class: "image-editor", id: "image-editor", hidden: true });
  /** An example's editor: another label (an existing class or a new one), or remove it. */
  function editImage(img, url) {
    const label = el("input", { type: "text", id: "image-label", value: img.label, list: "class-names" });
    const error = el("p", { class: "error", role: "alert" });
    async function change(request, done) {
      try { await api(`/v1/datasets/${ds.id}/images/${img.id}`, request); toast(done); route(); }
      catch (err) { error.textContent = err.message; }
    }
    editor.replaceChildren(el("img", { src: url, alt: img.filename }),
      el("div", {}, el("b", {}, img.filename),
        el("datalist", { id: "class-names" }, ds.classes.map((c) => el("option", { value: c.name }))),
        el("div", { class: "row" }, label,
          el("button", { type: "button", id: "image-relabel", onclick: () => change(
            { method: "PATCH", json: { label: label.value } }, `${img.filename} is now “${label.value.trim()}”`) }, "Relabel"),
          el("button", { type: "button", class: "danger", id: "image-remove", onclick: () => change(
            { method: "DELETE" }, `${img.filename} removed`) }, "Remove"),
          el("button", { type: "button", class: "secondary", onclick: () => { editor.hidden = true; } }, "Close")),
        error));
    editor.hidden = false;
  }
  const rejected = ds.rejected.length
    ? el("table", { id: "rejected" }, el("thead", {}, el("tr", {}, el("th", {}, "File"), el("th", {}, "Reason"))),
      el("tbody", {}, ds.rejected.map((r) => el("tr", {}, el("td", {}, r.file), el("td", {}, r.reason)))))
    : el("p", { class: "muted" }, "No file was rejected.");
  box.append(el("div", { class: "card", id: "dataset-card" },
    el("div", { class: "row" },
      el("div", {}, el("h1", {}, ds.name),
        el("p", { class: "muted" }, `${ds.num_images} images in ${ds.classes.length} classes · uploaded ${new Date(ds.created_at).toLocaleString()}`)),
      el("button", { type: "button", onclick: () => { location.hash = `#/classifiers/new?dataset=${ds.id}`; } },
        "Train a classifier"),
      el("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete dataset “${ds.name}”?`)) return;
        await api(`/v1/datasets/${ds.id}`, { method: "DELETE" });
        location.hash = "#/datasets";
      } }, "Delete")),
    imbalanceNote(ds.classes),
    addImagesRow(ds),
    el("h3", {}, "Classes"),
    el("p", { class: "hint" }, "Click an example to give it another label or remove it."),
    editor,
    el("table", { id: "classes" }, el("thead", {}, el("tr", {}, el("th", {}, "Class"), el("th", { class: "num" }, "Images"),
      el("th", {}, "Examples"))), classes),
    editsTable(ds),
    el("h3", {}, `Rejected files (${ds.rejected.length})`),
    rejected));
  const shown = ds.classes.slice(0, 40);
  for (const c of shown) {
    const thumbs = el("div", { class: "thumbs" });
    classes.append(el("tr", { dataset: { label: c.name } }, el("td", {}, c.name), el("td", { class: "num" }, c.count), el("td", {}, thumbs)));
    loadThumbs(ds.id, c.name, thumbs, (img, url) => editImage(img, url));
  }
  if (ds.classes.length > shown.length) {
    classes.append(el("tr", {}, el("td", { colspan: 3, class: "muted" }, `… and ${ds.classes.length - shown.length} more classes`)));
  }
}

/** A warning when the largest class has at least twice the images of the smallest: a classifier
 * then leans to the large classes, and its holdout measures the small ones on very few images. */
function imbalanceNote(classes) {
  if (classes.length < 2) return null;
  const counts = classes.map((c) => c.count);
  const least = Math.min(...counts), most = Math.max(...counts);
  if (most < 2 * least) return null;
  const small = classes.filter((c) => c.count < most / 2).map((c) => c.name);
  const names = small.slice(0, 5).join(", ") + (small.length > 5 ? ` and ${small.length - 5} more` : "");
  return el("p", { class: "warning", id: "imbalance", role: "note" },
    `Unbalanced classes: ${least} to ${most} images a class. A classifier leans towards the large `
    + `classes; add images to ${names} if you can.`);
}

/** Adding images to a dataset: a zip or a folder of class folders, checked as an upload is. */
function addImagesRow(ds) {
  const zipInput = el("input", { type: "file", accept: ".zip,application/zip", id: "add-zip-input", hidden: true });
  const folderInput = el("input", { type: "file", webkitdirectory: true, multiple: true, hidden: true });
  const error = el("p", { class: "error", role: "alert" });
  async function add(archive, filename) {
    error.textContent = "";
    const form = new FormData();
    form.append("archive", archive, filename);
    try {
      const answer = await api(`/v1/datasets/${ds.id}/images`, { method: "POST", form });
      toast(`Added ${answer.added} images` + (answer.rejected.length ? `, ${answer.rejected.length} rejected` : ""));
      route();
    } catch (err) { error.textContent = err.message; }
  }
  zipInput.addEventListener("change", () => { if (zipInput.files[0]) add(zipInput.files[0], zipInput.files[0].name); });
  folderInput.addEventListener("change", async () => {
    const files = [...folderInput.files].map((f) => ({ path: f.webkitRelativePath || f.name, file: f }));
    if (files.length) add(await zipFiles(files), `${files[0].path.split("/")[0]}.zip`);
  });
  return el("div", { class: "row", id: "add-images" },
    el("span", { class: "muted" }, "Add images (to their classes, or new ones):"),
    el("button", { type: "button", class: "secondary", onclick: () => zipInput.click() }, "A zip…"),
    el("button", { type: "button", class: "secondary", onclick: () => folderInput.click() }, "A folder…"),
    zipInput, folderInput, error);
}

/** The dataset's changes since its upload, newest first. */
function editsTable(ds) {
  if (!ds.edits.length) return null;
  const what = (e) => e.change === "added" ? `added ${e.images} images (${e.labels.join(", ")})`
    : e.change === "removed" ? `removed ${e.filename} (${e.label})`
    : `relabelled ${e.filename}: ${e.label_before} → ${e.label}`;
  return el("div", {}, el("h3", {}, `Changes since the upload (${ds.revision})`),
    el("table", { id: "edits" }, el("tbody", {}, ds.edits.slice(-10).reverse().map((e) =>
      el("tr", {}, el("td", { class: "muted" }, new Date(e.at).toLocaleString()), el("td", {}, what(e)))))));
}

async function loadThumbs(datasetId, label, box, onPick) {
  try {
    const page = await api(`/v1/datasets/${datasetId}/images?label=${encodeURIComponent(label)}&limit=8`);
    for (const img of page.data) {
      const url = await imageUrl(`/v1/datasets/${datasetId}/images/${img.id}/thumbnail?size=88`);
      const thumb = el("img", { src: url, alt: img.filename, title: img.filename, dataset: { imageId: img.id } });
      if (onPick) {
        thumb.classList.add("pickable");
        thumb.addEventListener("click", () => onPick(img, url));
      }
      box.append(thumb);
    }
  } catch (err) {
    if (!state.abort.signal.aborted) box.append(el("span", { class: "muted" }, "(no preview)"));
  }
}

// ------------------------------------------------------------------------------------ classifiers

async function classifiersPage(page, selectedId, query) {
  const list = el("ul", { class: "list", id: "classifier-list" });
  const detail = el("div", { id: "classifier-detail" });
  page.append(el("div", { class: "cols" },
    el("div", {},
      el("div", { class: "card" }, el("a", { href: "#/classifiers/new" }, el("button", { type: "button" }, "New classifier"))),
      el("div", { class: "card" }, el("h2", {}, "Your classifiers"), list)),
    detail));
  const classifiers = await listAll("/v1/classifiers");
  if (!classifiers.length) list.append(el("li", { class: "muted" }, "None yet."));
  const creating = selectedId === "new" || !classifiers.length;
  const current = creating ? null
    : classifiers.find((c) => c.id === selectedId) || classifiers[classifiers.length - 1];
  for (const c of classifiers.slice().reverse()) {
    const accuracy = c.metrics ? ` · ${pct(c.metrics.holdout_accuracy)}` : "";
    list.append(el("li", {}, el("a", { href: `#/classifiers/${c.id}`, class: c === current ? "active" : "" },
      el("span", {}, c.name, el("small", { class: "muted meta" },
        `${new Date(c.created_at).toLocaleString()} · ${c.version > 1 ? `v${c.version} · ` : ""}${c.base_model_id}${accuracy}`)),
      badge(c.status))));
  }
  if (creating) await newClassifier(detail, query);
  else await classifierDetail(detail, current);
}

function modelCard(card) {
  const acc = card.accuracy.length
    ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Task on unseen classes"), el("th", { class: "num" }, "Accuracy"))),
      el("tbody", {}, card.accuracy.map((a) => el("tr", {},
        el("td", {}, `${a.ways}-way ${a.shots}-shot (${a.episodes} episodes)`),
        el("td", { class: "num" }, `${pct(a.accuracy)}${a.ci95 !== null ? ` ± ${(100 * a.ci95).toFixed(1)}` : ""}`)))))
    : el("p", { class: "muted" }, "No accuracy measured yet.");
  return el("div", { class: "model-card", id: "model-card" },
    el("div", {}, el("b", {}, card.name), " ", card.is_default ? el("span", { class: "badge" }, "default") : null,
      el("span", { class: "muted" }, ` · ${card.algorithm} · ${card.channels === 1 ? "grayscale" : "colour"} ${card.image_size}×${card.image_size}`)),
    el("p", {}, el("b", {}, "Suits: "), card.suits),
    card.pretrained_on ? el("p", { class: "muted" }, `Pretrained on ${card.pretrained_on}` +
      (card.training_seconds ? ` in ${duration(card.training_seconds)}` : "")) : null,
    acc);
}

async function newClassifier(box, query) {
  const [datasets, models] = await Promise.all([listAll("/v1/datasets"), listAll("/v1/base-models")]);
  const ready = models.filter((m) => m.status === "ready");
  const error = el("p", { class: "error", role: "alert" });
  if (!datasets.length) {
    box.append(el("div", { class: "card" }, el("h1", {}, "New classifier"),
      el("p", {}, "First ", el("a", { href: "#/datasets" }, "upload a dataset"), ".")));
    return;
  }
  const dsSelect = el("select", { id: "clf-dataset" }, datasets.slice().reverse().map((d) =>
    el("option", { value: d.id, selected: d.id === query.get("dataset") }, `${d.name} (${d.num_images} images, ${d.classes.length} classes)`)));
  // Left empty, the job scores every ready base model on the dataset and trains from the best.
  const modelSelect = el("select", { id: "clf-base-model" },
    el("option", { value: "", selected: true }, "The best for this dataset (the job scores each)"),
    ready.map((m) => el("option", { value: m.id }, `${m.name}${m.is_default ? " (default)" : ""}`)));
  const name = el("input", { type: "text", id: "clf-name", placeholder: "e.g. glyphs classifier" });
  const holdout = el("input", { type: "number", id: "clf-holdout", min: 0, max: 0.5, step: 0.05, value: 0.2 });
  const steps = el("input", { type: "number", id: "clf-steps", min: 0, max: 10000, placeholder: "the base model's (usually 30)" });
  const cardBox = el("div");
  async function showCard() {
    if (!modelSelect.value) {
      cardBox.replaceChildren(el("p", { class: "muted", id: "clf-choice-note" },
        `Before training, the job scores ${ready.map((m) => m.name).join(", ")} on this dataset ` +
        "(how well each one's features tell its classes apart) and trains from the best; the " +
        "classifier's page shows the scores."));
      return;
    }
    cardBox.replaceChildren(el("p", { class: "muted" }, "Loading the model card…"));
    try {
      cardBox.replaceChildren(modelCard(await api(`/v1/base-models/${modelSelect.value}/card`)));
    } catch (err) {
      cardBox.replaceChildren(el("p", { class: "error" }, err.message));
    }
  }
  modelSelect.addEventListener("change", showCard);
  const start = el("button", { type: "submit", id: "clf-start" }, "Start training");
  const form = el("form", { id: "new-classifier" },
    el("h1", {}, "New classifier"),
    el("label", {}, "Name", name),
    el("label", {}, "Dataset", dsSelect),
    el("label", {}, "Base model", modelSelect),
    cardBox,
    el("div", { class: "row" },
      el("label", {}, "Holdout fraction (kept aside per class to measure accuracy)", holdout),
      el("label", {}, "Training steps per pass", steps)),
    start, error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    start.disabled = true;
    const ds = datasets.find((d) => d.id === dsSelect.value);
    try {
      const created = await api("/v1/classifiers", { method: "POST", json: {
        name: name.value.trim() || ds.name, dataset_id: dsSelect.value,
        ...(modelSelect.value ? { base_model_id: modelSelect.value } : {}),
        params: { holdout_fraction: Number(holdout.value), ...(steps.value ? { steps: Number(steps.value) } : {}) },
      } });
      location.hash = `#/classifiers/${created.id}`;
    } catch (err) {
      error.textContent = err.message;
      start.disabled = false;
    }
  });
  box.append(el("div", { class: "card" }, form));
  if (ready.length) await showCard();
  else error.textContent = "No base model is ready.";
}

/** A live progress panel for a job: bar, phase, step, ETA, loss curve, cancel. */
/** A loss curve with its axes: x the step (0 to `total`), y the loss (0 to its largest); the
 * holdout pass in blue, the rest in orange, a dashed line where the final pass starts. */
function drawLossCurve(svg, points, total, holdoutAccuracy = null) {
  const W = 640, H = 220, L = 52, R = 12, T = 10, B = 24;
  svg.replaceChildren();
  if (points.length < 2) return;
  const maxLoss = (Math.max(...points.map((p) => p.loss)) || 1) * 1.05;
  const x = (s) => L + ((W - L - R) * s) / Math.max(1, total);
  const y = (l) => H - B - ((H - B - T) * l) / maxLoss;
  const text = (attrs, content) => { const t = svgEl("text", { class: "tick", ...attrs }); t.textContent = content; return t; };
  svg.append(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }),
    svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }),
    text({ x: W - R, y: H - B - 6, "text-anchor": "end" }, "step"),
    text({ x: L + 6, y: T + 10 }, "loss"));
  for (const f of [0, 0.5, 1]) {
    svg.append(text({ x: L - 6, y: y(maxLoss * f) + 4, "text-anchor": "end" }, (maxLoss * f).toPrecision(2)),
      text({ x: x(total * f), y: H - 6, "text-anchor": ["start", "middle", "end"][2 * f] }, String(Math.round(total * f))));
  }
  for (const kind of ["holdout_pass", "other"]) {
    const sel = points.filter((p) => (kind === "holdout_pass") === (p.phase === "holdout_pass"));
    if (sel.length < 2) continue;
    svg.append(svgEl("polyline", { points: sel.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" "),
      fill: "none", stroke: kind === "holdout_pass" ? "#2563eb" : "#ea580c", "stroke-width": 2 }));
  }
  const boundary = points.find((p) => p.phase === "final_pass");
  if (boundary && points.some((p) => p.phase === "holdout_pass")) {
    svg.append(svgEl("line", { x1: x(boundary.step), x2: x(boundary.step), y1: T, y2: H - B, stroke: "#9ca3af",
      "stroke-dasharray": "4 4" }));
    // What the holdout pass's model scored on the held-out images, where that pass ends.
    if (holdoutAccuracy !== null) {
      svg.append(text({ x: x(boundary.step) - 6, y: T + 24, "text-anchor": "end", id: "curve-holdout" },
        `holdout accuracy ${pct(holdoutAccuracy)}`));
    }
  }
}

function progressPanel(job, { onFinished, onUpdate, cancellable = true } = {}) {
  const bar = el("div", { style: { width: "0%" } });
  const phase = el("div", { class: "phase", id: "job-phase" });
  const step = el("b", { id: "job-step" });
  const eta = el("b", { id: "job-eta" });
  const loss = el("b", { id: "job-loss" });
  const status = el("span", { id: "job-status" });
  const svg = svgEl("svg", { class: "curve", viewBox: "0 0 640 220", id: "loss-curve" });
  const points = [];
  // The curve so far is kept by the service: a reload draws it whole, then events extend it.
  api(`/v1/jobs/${job.id}/curve`).then((c) => {
    const last = c.points.length ? c.points[c.points.length - 1].step : -1;
    points.splice(0, points.length, ...c.points, ...points.filter((p) => p.step > last));
    drawCurve(c.total_steps);
  }).catch(() => {});
  const cancel = el("button", { type: "button", class: "danger", id: "job-cancel", onclick: async () => {
    cancel.disabled = true;
    try { await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }); toast("Cancel requested"); }
    catch (err) { toast(err.message); cancel.disabled = false; }
  } }, "Cancel");
  const panel = el("div", { class: "card", id: "progress-panel" },
    el("div", { class: "row" }, el("h2", {}, job.kind === "training" ? "Training" : "Pretraining", " ", status),
      cancellable ? cancel : null),
    phase,
    el("div", { class: "progress", id: "job-progress" }, bar),
    el("div", { class: "stats" },
      el("div", { class: "stat" }, step, el("span", {}, "step")),
      el("div", { class: "stat" }, loss, el("span", {}, "loss")),
      el("div", { class: "stat" }, eta, el("span", {}, "time left"))),
    svg,
    el("div", { class: "legend" },
      job.kind === "training" ? el("span", {}, el("i", { style: { background: "var(--holdout)" } }), "holdout pass") : null,
      el("span", {}, el("i", { style: { background: "var(--final)" } }), job.kind === "training" ? "final pass" : "pretraining loss")));

  function drawCurve(total) {
    drawLossCurve(svg, points, total);
  }

  function update(j) {
    const p = j.progress;
    bar.style.width = `${(100 * p.fraction).toFixed(1)}%`;
    status.replaceChildren(badge(j.status));
    phase.textContent = j.phase ? PHASE_TEXT[j.phase] || j.phase
      : j.status === "succeeded" ? "Finished" : j.status === "failed" ? `Failed: ${j.error}` : "Cancelled";
    step.textContent = `${p.step} / ${p.total_steps}`;
    loss.textContent = p.loss === null ? "–" : p.loss.toFixed(3);
    eta.textContent = j.status === "running" ? duration(p.eta_seconds) : "–";
    cancel.hidden = FINISHED.includes(j.status);
    if (onUpdate) onUpdate(j);
    if (p.loss !== null && j.status === "running") {
      const lastPoint = points[points.length - 1];
      if (!lastPoint || lastPoint.step !== p.step) points.push({ step: p.step, loss: p.loss, phase: j.phase });
      drawCurve(p.total_steps);
    }
  }
  update(job);
  if (!FINISHED.includes(job.status)) {
    followJob(job.id, update).then((last) => { if (last && onFinished) onFinished(last); })
      .catch((err) => toast(err.message));
  }
  return panel;
}

/** How the job chose the base model, when the request named none (null otherwise). */
function choiceLine(choice) {
  if (!choice) return null;
  if (!choice.chosen) return el("p", { class: "muted", id: "base-model-choice" },
    `The base model is chosen when the job starts, among ${choice.candidates.map((c) => c.base_model_id).join(", ")}.`);
  const scores = choice.candidates.map((c) =>
    `${c.base_model_id} ${c.score === null ? "–" : `${Math.round(100 * c.score)}%`}`).join(", ");
  const [first, second] = choice.candidates;
  const tie = second && first.score !== null && first.score === second.score
    ? `; tied, so the margin decided: ${first.margin.toFixed(2)} against ${second.margin.toFixed(2)}` : "";
  return el("p", { class: "muted", id: "base-model-choice", title: choice.rule },
    `Base model chosen for this dataset: ${choice.chosen} (leave-one-out accuracy of each one's prototypes: ${scores}${tie}).`);
}

async function classifierDetail(box, clf) {
  const statusBadge = el("span", { id: "classifier-status" }, badge(clf.status));
  const CLASSIFIER_STATUS = { running: "training", succeeded: "ready" };
  const head = el("div", { class: "card" },
    el("div", { class: "row" },
      el("div", {}, el("h1", {}, clf.name, " ", statusBadge),
        el("p", { class: "muted" }, `version ${clf.version} · ${clf.labels.length} classes · base model ${clf.base_model_id} · `,
          el("a", { href: `#/datasets/${clf.dataset_id}` }, "dataset")),
        choiceLine(clf.base_model_choice)),
      el("button", { type: "button", class: "danger", onclick: async () => {
        if (!confirm(`Delete classifier “${clf.name}”?`)) return;
        await api(`/v1/classifiers/${clf.id}`, { method: "DELETE" });
        location.hash = "#/classifiers";
      } }, "Delete")));
  box.append(head, versionsCard(clf));
  if (clf.job_id && clf.status !== "ready") {
    const job = await api(`/v1/jobs/${clf.job_id}`);
    box.append(progressPanel(job, {
      onFinished: () => route(),
      onUpdate: (j) => {
        const status = CLASSIFIER_STATUS[j.status] || j.status;
        statusBadge.replaceChildren(badge(status));
        const listed = document.querySelector("#classifier-list a.active .badge");
        if (listed) listed.replaceWith(badge(status));
      },
    }));
  }
  if (clf.status === "ready") {
    box.append(exportCard(clf));
    if (clf.metrics) box.append(resultsCard(clf), mistakesCard(clf));
    if (clf.job_id) box.append(curveCard(clf.job_id, clf.metrics));
    else box.append(el("div", { class: "card muted" }, "No holdout metrics: trained with holdout_fraction 0."));
    box.append(tryIt(clf));
  }
}

/** Download the classifier as a zip to run without the service (the API needs the key header,
 * so the zip is fetched here and handed to the browser as an object URL). */
function exportCard(clf) {
  const format = el("select", { id: "export-format" },
    el("option", { value: "onnx" }, "ONNX"), el("option", { value: "torchscript" }, "TorchScript"),
    el("option", { value: "safetensors" }, "safetensors (the service's checkpoint)"));
  const button = el("button", { type: "button", id: "export-button", onclick: async () => {
    button.disabled = true;
    try {
      const res = await fetch(`/v1/classifiers/${clf.id}/export?format=${format.value}`,
        { headers: { Authorization: `Bearer ${state.key}` }, signal: state.abort.signal });
      if (!res.ok) {
        const data = await res.json().catch(() => ({ detail: res.statusText }));
        throw new ApiError(res.status, data.detail || res.statusText);
      }
      const url = URL.createObjectURL(await res.blob());
      const link = el("a", { href: url, download: `classifier-${clf.id}-${format.value}.zip` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      toast(err.message);
    } finally {
      button.disabled = false;
    }
  } }, "Download");
  return el("div", { class: "card" }, el("h2", {}, "Export"),
    el("p", { class: "muted" }, "A zip to run this classifier without the service: the model, "
      + "labels.json, preprocessing.json and a README with example code."),
    el("div", { class: "row" }, format, button));
}

function resultsCard(clf) {
  const m = clf.metrics;
  const max = Math.max(1, ...m.confusion_matrix.flat());
  const heat = el("table", { class: "heat", id: "confusion" },
    el("thead", {}, el("tr", {}, el("th", {}, "true \\ predicted"), clf.labels.map((l) => el("th", {}, l)))),
    el("tbody", {}, m.confusion_matrix.map((row, i) => el("tr", {}, el("th", { class: "row" }, clf.labels[i]),
      row.map((v, j) => {
        const a = v / max;
        const hue = i === j ? "37,99,235" : "220,38,38";
        return el("td", { title: `${clf.labels[i]} → ${clf.labels[j]}: ${v}`,
          style: { background: v ? `rgba(${hue},${(0.15 + 0.85 * a).toFixed(2)})` : "#f3f4f6", color: a > 0.5 ? "#fff" : "#111827" } }, v);
      })))));
  return el("div", { class: "card", id: "results" },
    el("h2", {}, "Results on held-out images"),
    el("div", { class: "stats" },
      el("div", { class: "stat" }, el("b", { class: "big", id: "holdout-accuracy" }, pct(m.holdout_accuracy)), el("span", {}, "holdout accuracy")),
      el("div", { class: "stat" }, el("b", {}, m.per_class.reduce((s, c) => s + c.support, 0)), el("span", {}, "held-out images"))),
    el("div", { class: "cols2" },
      el("div", {}, el("h3", {}, "Per class"),
        el("table", { id: "per-class" }, el("thead", {}, el("tr", {}, el("th", {}, "Class"), el("th", { class: "num" }, "Precision"),
          el("th", { class: "num" }, "Recall"), el("th", { class: "num" }, "Images"))),
        el("tbody", {}, m.per_class.map((c) => el("tr", {}, el("td", {}, c.label), el("td", { class: "num" }, pct(c.precision)),
          el("td", { class: "num" }, pct(c.recall)), el("td", { class: "num" }, c.support)))))),
      el("div", {}, el("h3", {}, "Confusion matrix"), el("div", { class: "heat-wrap" }, heat),
        el("p", { class: "hint" }, "Rows: the true class; columns: the predicted one. Blue: right, red: mistaken."))));
}

/** The classifier's versions side by side (the newest ready one answers predict), and a
 * button that retrains it on its dataset as the dataset is now. */
function versionsCard(clf) {
  const body = el("tbody");
  const error = el("p", { class: "error", role: "alert" });
  const retrain = el("button", { type: "button", class: "secondary", id: "retrain", onclick: async () => {
    retrain.disabled = true;
    try {
      const created = await api(`/v1/classifiers/${clf.id}/versions`, { method: "POST", json: {} });
      location.hash = `#/classifiers/${created.id}`;
    } catch (err) { error.textContent = err.message; retrain.disabled = false; }
  } }, "Retrain on the dataset as it is now");
  api(`/v1/classifiers/${clf.id}/versions`).then((versions) => {
    const ready = versions.filter((v) => v.status === "ready");
    const serving = ready.length ? ready[ready.length - 1].version : null;
    body.replaceChildren(...versions.map((v) => el("tr", { class: v.id === clf.id ? "current" : "", dataset: { version: v.version } },
      el("td", {}, el("a", { href: `#/classifiers/${v.id}` }, `v${v.version}`)), el("td", {}, badge(v.status)),
      el("td", { class: "num" }, v.metrics ? pct(v.metrics.holdout_accuracy) : "–"),
      el("td", { class: "num" }, v.labels.length), el("td", {}, v.base_model_id),
      el("td", { class: "muted" }, new Date(v.created_at).toLocaleString()),
      el("td", {}, v.version === serving ? "answers predict" : ""))));
  }).catch((err) => { error.textContent = err.message; });
  return el("div", { class: "card", id: "versions-card" },
    el("div", { class: "row" }, el("h2", {}, "Versions"), retrain),
    el("table", { id: "versions" }, el("thead", {}, el("tr", {}, el("th", {}, "Version"), el("th", {}, "Status"),
      el("th", { class: "num" }, "Holdout"), el("th", { class: "num" }, "Classes"), el("th", {}, "Base model"),
      el("th", {}, "Created"), el("th", {}, "Predict"))), body),
    el("p", { class: "hint" }, "Predict answers with the newest ready version (or the version a request names)."),
    error);
}

/** The training loss of a finished job, as the service kept it. */
function curveCard(jobId, metrics) {
  const svg = svgEl("svg", { class: "curve", viewBox: "0 0 640 220", id: "final-curve" });
  const card = el("div", { class: "card", id: "curve-card" }, el("h2", {}, "Training loss"), svg,
    el("div", { class: "legend" }, el("span", {}, el("i", { style: { background: "var(--holdout)" } }), "holdout pass"),
      el("span", {}, el("i", { style: { background: "var(--final)" } }), "final pass (from the base model again, on every image)")));
  api(`/v1/jobs/${jobId}/curve`).then((c) => {
    if (c.points.length < 2) card.replaceChildren(el("h2", {}, "Training loss"), el("p", { class: "muted" }, "No loss curve was kept for this job."));
    else drawLossCurve(svg, c.points, c.total_steps, metrics ? metrics.holdout_accuracy : null);
  }).catch((err) => card.append(el("p", { class: "error" }, err.message)));
  return card;
}

/** The holdout images the measured model got wrong: image, true label, answer, probability. */
function mistakesCard(clf) {
  const gallery = el("div", { class: "gallery", id: "mistakes" }, el("p", { class: "muted" }, "Loading…"));
  (async () => {
    try {
      const page = await api(`/v1/classifiers/${clf.id}/holdout?mistakes=true&limit=48`);
      if (!page.count) {
        gallery.replaceChildren(el("p", { class: "muted" }, "No mistakes on the holdout."));
        return;
      }
      gallery.replaceChildren(el("p", { class: "muted", id: "mistakes-count" },
        `${page.count} of the held-out images were answered wrong` +
        (page.count > page.data.length ? ` (the first ${page.data.length} shown)` : "") + "."));
      for (const m of page.data) {
        const img = el("img", { alt: m.filename, title: m.filename });
        gallery.append(el("figure", { class: "mistake" }, img,
          el("figcaption", {}, el("span", {}, `true: ${m.label}`),
            el("span", { class: "wrong" }, `said: ${m.predicted} (${pct(m.probability)})`))));
        imageUrl(`/v1/datasets/${clf.dataset_id}/images/${m.image_id}/thumbnail?size=96`)
          .then((url) => { img.src = url; })
          .catch(() => { img.alt = `${m.filename} (no preview: the dataset was deleted?)`; });
      }
    } catch (err) {
      gallery.replaceChildren(el("p", { class: "error" }, err.message));
    }
  })();
  return el("div", { class: "card", id: "mistakes-card" }, el("h2", {}, "Mistakes on held-out images"), gallery);
}

function tryIt(clf) {
  const results = el("div", { id: "predictions" });
  const error = el("p", { class: "error", role: "alert" });
  const topK = el("input", { type: "number", id: "top-k", min: 1, max: clf.labels.length, value: Math.min(3, clf.labels.length) });
  const input = el("input", { type: "file", accept: "image/*", multiple: true, id: "try-input", hidden: true });
  const zone = el("div", { class: "dropzone", id: "try-dropzone" },
    el("div", {}, el("b", {}, "Drop images here to classify them")),
    el("div", { class: "buttons" }, el("button", { type: "button", class: "secondary", onclick: () => input.click() }, "Choose images…")),
    input);
  async function predict(files) {
    if (!files.length) return;
    error.textContent = "";
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("top_k", String(topK.value || 3));
    try {
      const answer = await api(`/v1/classifiers/${clf.id}/predict`, { method: "POST", form });
      results.replaceChildren(...answer.results.map((r, i) => el("div", { class: "prediction" },
        el("img", { src: URL.createObjectURL(files[i]), alt: r.filename }),
        el("div", {}, el("div", { class: "muted" }, r.filename),
          r.unknown ? el("p", { class: "unknown" }, el("b", {}, "Unknown"),
            ` – unlike every class (score ${r.score.toFixed(2)}, below the threshold ${answer.threshold.toFixed(2)}); its nearest labels:`) : null,
          r.error ? el("p", { class: "error" }, r.error)
            : r.predictions.map((p) => el("div", { class: r.unknown ? "bar faint" : "bar" }, el("div", { style: { width: pct(p.probability) } }),
              el("span", {}, el("b", {}, p.label), pct(p.probability))))))));
    } catch (err) {
      error.textContent = err.message;
    }
  }
  input.addEventListener("change", () => predict([...input.files]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); predict([...e.dataTransfer.files]); });
  return el("div", { class: "card", id: "try-it" }, el("h2", {}, "Try it"),
    el("label", { class: "inline" }, "Top", topK, "labels"), zone, error, results);
}

// ------------------------------------------------------------------------------------ admin

async function adminPage(page) {
  if (!state.admin) {
    page.append(el("div", { class: "card" }, "The admin pages need an admin key."));
    return;
  }
  const [models, jobs, keys, datasets] = await Promise.all([listAll("/v1/base-models"),
    listAll("/v1/jobs"), listAll("/v1/admin/api-keys"), listAll("/v1/datasets")]);
  const modelsCard = el("div", { class: "card", id: "admin-models" }, el("h2", {}, "Base models"),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Algorithm"), el("th", {}, "Input"),
      el("th", {}, "Status"), el("th", {}, "Accuracy (5-way 1-shot)"), el("th", {}, ""))),
    el("tbody", {}, models.map((m) => {
      const result = Object.values(m.metrics || {}).flatMap((r) => (r && r.results) || [])
        .find((r) => r.ways === 5 && r.shots === 1);
      return el("tr", { dataset: { model: m.id } }, el("td", {}, m.name), el("td", {}, m.algorithm),
        el("td", {}, `${m.channels === 1 ? "gray" : "RGB"} ${m.image_size}²`), el("td", {}, badge(m.status)),
        el("td", {}, result ? pct(result.accuracy) : "–"),
        el("td", {}, m.is_default ? el("span", { class: "badge" }, "default")
          : m.status === "ready" ? el("button", { type: "button", class: "secondary", onclick: async () => {
            await api(`/v1/admin/base-models/${m.id}/default`, { method: "POST" });
            toast(`${m.name} is now the default base model`);
            route();
          } }, "Make default") : null));
    }))));

  const error = el("p", { class: "error", role: "alert" });
  const ptName = el("input", { type: "text", id: "pt-name", placeholder: "e.g. my-base" });
  const ptDataset = el("select", { id: "pt-dataset" }, datasets.map((d) => el("option", { value: d.id }, `${d.name} (${d.classes.length} classes)`)));
  const ptAlgorithm = el("select", { id: "pt-algorithm" }, ALGORITHMS.map((a) => el("option", { value: a }, a)));
  const ptParams = el("input", { type: "text", id: "pt-params", value: '{"iterations": 1000}' });
  const ptForm = el("form", { id: "pretrain-form" },
    el("div", { class: "row" }, el("label", {}, "Name", ptName), el("label", {}, "Dataset of base classes", ptDataset)),
    el("div", { class: "row" }, el("label", {}, "Algorithm", ptAlgorithm),
      el("label", {}, "Parameters (JSON: iterations, ways, shots, queries, image_size, channels, …)", ptParams),
      el("button", { type: "submit" }, "Start pretraining")), error);
  if (!datasets.length) {
    // Nothing to pretrain on: say so, instead of a form whose submit can only be refused.
    ptForm.querySelector("button[type=submit]").disabled = true;
    error.textContent = "No dataset of yours to pretrain on: upload the base classes under Datasets first.";
  }
  ptForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      let params;
      try { params = JSON.parse(ptParams.value || "{}"); } catch { throw new Error("the parameters are not valid JSON"); }
      const created = await api("/v1/admin/pretraining-jobs", { method: "POST", json: {
        name: ptName.value.trim() || "base-model", dataset_id: ptDataset.value, algorithm: ptAlgorithm.value, params } });
      toast(`Pretraining job ${created.job_id.slice(0, 8)} started`);
      route();
    } catch (err) {
      error.textContent = err.message;
    }
  });
  const pretraining = jobs.filter((j) => j.kind === "pretraining");
  const jobsBox = el("div", { id: "pretraining-jobs" });
  for (const j of pretraining.slice(0, 10)) {
    const model = models.find((m) => m.id === j.base_model_id);
    if (FINISHED.includes(j.status)) {
      jobsBox.append(el("div", { class: "row", style: { padding: "6px 0", borderBottom: "1px solid var(--line)" } },
        el("span", {}, model ? model.name : j.base_model_id), badge(j.status),
        el("span", { class: "muted" }, `${j.progress.step} / ${j.progress.total_steps} iterations`),
        el("span", { class: "muted" }, j.error || "")));
    } else {
      jobsBox.append(el("h3", {}, model ? model.name : j.base_model_id), progressPanel(j, { onFinished: () => route() }));
    }
  }
  if (!pretraining.length) jobsBox.append(el("p", { class: "muted" }, "No pretraining job yet."));

  const newKey = el("div");
  const keyTenant = el("input", { type: "text", id: "key-tenant", placeholder: "tenant, e.g. acme" });
  const keyAdmin = el("input", { type: "checkbox", id: "key-admin" });
  const keyError = el("p", { class: "error", role: "alert" });
  const keyForm = el("form", { id: "key-form" },
    el("div", { class: "row" }, el("label", {}, "Tenant", keyTenant),
      el("label", { class: "inline" }, keyAdmin, "admin"), el("button", { type: "submit" }, "Create key")), keyError, newKey);
  keyForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    keyError.textContent = "";
    try {
      const k = await api("/v1/admin/api-keys", { method: "POST", json: { tenant: keyTenant.value.trim(), admin: keyAdmin.checked } });
      await renderKeys();
      newKey.replaceChildren(el("p", {}, "The new key (shown only now; copy it):"), el("div", { class: "newkey", id: "new-key" }, k.key));
    } catch (err) {
      keyError.textContent = err.message;
    }
  });
  const keysBody = el("tbody");
  async function renderKeys(rows) {
    rows = rows || await listAll("/v1/admin/api-keys");
    keysBody.replaceChildren(...rows.map((k) => el("tr", {}, el("td", {}, el("code", {}, k.prefix)), el("td", {}, k.tenant),
      el("td", {}, k.scope), el("td", {}, new Date(k.created_at).toLocaleString()),
      el("td", {}, state.key.startsWith(`mtl_${k.prefix}_`) ? el("span", { class: "muted" }, "this key")
        : el("button", { type: "button", class: "danger", onclick: async () => {
          if (!confirm(`Revoke key ${k.prefix} of ${k.tenant}?`)) return;
          await api(`/v1/admin/api-keys/${k.prefix}`, { method: "DELETE" });
          await renderKeys();
        } }, "Revoke")))));
  }
  await renderKeys(keys);
  page.append(modelsCard,
    el("div", { class: "card" }, el("h2", {}, "Pretraining"), ptForm, jobsBox),
    el("div", { class: "card", id: "admin-keys" }, el("h2", {}, "API keys"),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Prefix"), el("th", {}, "Tenant"), el("th", {}, "Scope"),
        el("th", {}, "Created"), el("th", {}, ""))), keysBody), keyForm));
}

// ------------------------------------------------------------------------------------ routing

async function route() {
  state.abort.abort(); // stop the previous page's streams and image loads
  state.abort = new AbortController();
  const page = document.getElementById("page");
  page.replaceChildren();
  const [path, queryString] = (location.hash.replace(/^#\/?/, "") || "datasets").split("?");
  const [section, id] = path.split("/");
  const query = new URLSearchParams(queryString || "");
  for (const a of document.querySelectorAll("nav a[data-page]")) a.classList.toggle("active", a.dataset.page === section);
  try {
    if (section === "classifiers") await classifiersPage(page, id, query);
    else if (section === "admin") await adminPage(page);
    else await datasetsPage(page, id);
  } catch (err) {
    if (!state.abort.signal.aborted && state.key) page.append(el("div", { class: "card error" }, err.message));
  }
}

function render() {
  const signedIn = Boolean(state.key);
  document.getElementById("sign-in").hidden = signedIn;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  document.getElementById("nav-admin").hidden = !state.admin;
  if (!signedIn) {
    state.abort.abort(); // the signed-out page's streams stop; sign-in gets a fresh signal
    state.abort = new AbortController();
    document.getElementById("page").replaceChildren();
    return;
  }
  const prefix = state.key.split("_")[1] || "key";
  document.getElementById("who-key").textContent = `${state.admin ? "admin" : "user"} key ${prefix}…`;
  route();
}

document.getElementById("sign-in-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("api-key");
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  try {
    await signIn(input.value.trim());
    input.value = "";
    render();
  } catch (err) {
    error.textContent = err instanceof ApiError && err.status === 401
      ? `That key was refused: ${err.message}` : err.message;
  }
});
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (state.key) route(); });

(async () => {
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    try { await signIn(saved); } catch { sessionStorage.removeItem(KEY_STORAGE); }
  }
  render();
})();
