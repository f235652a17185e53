// The SanaSprintScribblePad canvas widget (written against comfyui-frontend-package 1.27.10).
//
// The node's `scribble` input has the custom type SANA_SCRIBBLE; this extension draws it as a
// canvas with brush size, eraser, undo and clear. The strokes (white on black, the pad's width x
// height) are written as a grey PNG (web/lib/png.js), uploaded with POST /upload/image into
// input/sana_sprint/ under a content-derived name, and that name becomes the widget value, so the
// workflow's widgets_values change with every stroke (live mode and ComfyUI's cache see it). A
// background picture connected to the node is shown under the strokes after a run.

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { notifyChange } from "./lib/bus.js";
import {
  BACKGROUND_KEY, DEFAULT_BRUSH_SIZE, DRAW_UPLOAD_INTERVAL_MS, MAX_BRUSH_SIZE, MIN_BRUSH_SIZE,
  SCRIBBLE_NODE, SCRIBBLE_WIDGET_TYPE, UPLOAD_SUBFOLDER,
} from "./lib/constants.js";
import { scribbleFileName } from "./lib/content_name.js";
import { encodeGreyPng, streamDeflate, zlibStored } from "./lib/png.js";
import { StrokeModel, clientToCanvas, greyToRgba, stampSegment } from "./lib/strokes.js";

const pads = new Map(); // node -> pad
const deflate = typeof CompressionStream === "function" ? streamDeflate : zlibStored;

function el(tag, props = {}, style = "") {
  const e = Object.assign(document.createElement(tag), props);
  if (style) e.style.cssText = style;
  return e;
}

function viewUrl(value, type) {
  const slash = value.lastIndexOf("/");
  const params = new URLSearchParams({
    filename: value.slice(slash + 1), subfolder: slash < 0 ? "" : value.slice(0, slash), type,
  });
  return api.apiURL(`/view?${params}`);
}

class Pad {
  constructor(node, name) {
    this.node = node;
    this.model = new StrokeModel(1024, 1024);
    this.grey = this.model.raster();
    this.value = "";
    this.brush = node.properties?.sana_brush ?? DEFAULT_BRUSH_SIZE;
    this.erase = false;
    this.uploads = Promise.resolve();
    this.lastUploadAt = 0;
    this.background = null; // HTMLImageElement
    this.buildDom();
    this.widget = node.addDOMWidget(name, SCRIBBLE_WIDGET_TYPE, this.root, {
      getValue: () => this.value,
      setValue: (v) => this.load(v ?? ""),
      getMinHeight: () => 300,
      hideOnZoom: false,
    });
    // The prompt is built after pending uploads finish, so it never names a file not yet written.
    this.widget.serializeValue = async () => {
      await this.uploads;
      return this.value;
    };
  }

  buildDom() {
    this.root = el("div", { className: "sana-scribble" },
      "display:flex;flex-direction:column;gap:4px;height:100%;font:12px sans-serif;color:var(--input-text,#ddd);");
    const bar = el("div", {}, "display:flex;align-items:center;gap:4px;flex-wrap:wrap;");
    const button = (text, title, onClick) => {
      const b = el("button", { textContent: text, title, type: "button" }, "padding:1px 6px;cursor:pointer;");
      b.addEventListener("click", (e) => {
        e.stopPropagation();
        onClick();
      });
      bar.append(b);
      return b;
    };
    this.brushButton = button("Brush", "Draw white strokes", () => this.setErase(false));
    this.eraserButton = button("Eraser", "Erase strokes", () => this.setErase(true));
    this.size = el("input", { type: "range", min: MIN_BRUSH_SIZE, max: MAX_BRUSH_SIZE, value: this.brush,
      title: "Brush size (canvas pixels)", className: "sana-scribble-size" }, "width:90px;");
    this.sizeLabel = el("span", { textContent: `${this.brush}px` });
    this.size.addEventListener("input", () => this.setBrush(Number(this.size.value)));
    bar.append(this.size, this.sizeLabel);
    button("Undo", "Undo the last stroke or clear", () => this.edit(() => this.model.undo()));
    button("Clear", "Clear the canvas (undoable)", () => this.edit(() => this.model.clear()));
    this.stage = el("div", {}, "position:relative;flex:1;min-height:0;background:#111;");
    const layer = "position:absolute;inset:0;width:100%;height:100%;object-fit:contain;";
    this.bgCanvas = el("canvas", { width: 1024, height: 1024 }, layer);
    this.ink = el("canvas", { width: 1024, height: 1024, className: "sana-scribble-canvas" },
      `${layer}cursor:crosshair;touch-action:none;`);
    this.stage.append(this.bgCanvas, this.ink);
    this.status = el("div", { className: "sana-scribble-status" },
      "opacity:0.8;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;");
    this.root.append(bar, this.stage, this.status);
    this.bindPointer();
    this.setErase(false);
  }

  setErase(on) {
    this.erase = on;
    this.brushButton.style.fontWeight = on ? "normal" : "bold";
    this.eraserButton.style.fontWeight = on ? "bold" : "normal";
  }

  setBrush(size) {
    this.brush = size;
    this.sizeLabel.textContent = `${size}px`;
    this.node.properties ??= {};
    this.node.properties.sana_brush = size; // a drawing setting, not a model input: no re-run
  }

  sideWidget(name) {
    return this.node.widgets?.find((w) => w.name === name);
  }

  /** Follows the width / height widgets; true if the canvas size changed. */
  syncSize() {
    const w = Number(this.sideWidget("width")?.value ?? this.model.width);
    const h = Number(this.sideWidget("height")?.value ?? this.model.height);
    if (!(w > 0 && h > 0) || (w === this.model.width && h === this.model.height)) return false;
    this.model.resize(w, h);
    for (const c of [this.ink, this.bgCanvas]) Object.assign(c, { width: w, height: h });
    this.grey = this.model.raster();
    this.render();
    return true;
  }

  render(rect) {
    const { width: w, height: h } = this.model;
    const ctx = this.ink.getContext("2d");
    const r = rect ?? { left: 0, top: 0, right: w - 1, bottom: h - 1 };
    const pixels = greyToRgba(this.grey, w, r);
    ctx.putImageData(new ImageData(pixels, r.right - r.left + 1, r.bottom - r.top + 1), r.left, r.top);
    const bg = this.bgCanvas.getContext("2d");
    bg.fillStyle = "#000";
    bg.fillRect(0, 0, w, h);
    if (this.background) {
      bg.globalAlpha = 0.5;
      bg.drawImage(this.background, 0, 0, w, h);
      bg.globalAlpha = 1;
    }
  }

  renderInk(rect) {
    const { width: w } = this.model;
    const pixels = greyToRgba(this.grey, w, rect);
    const ctx = this.ink.getContext("2d");
    ctx.putImageData(new ImageData(pixels, rect.right - rect.left + 1, rect.bottom - rect.top + 1), rect.left, rect.top);
  }

  stamp(x0, y0, x1, y1) {
    const { width: w, height: h } = this.model;
    const rect = stampSegment(this.grey, w, h, x0, y0, x1, y1, this.brush / 2, this.erase ? 0 : 255);
    if (rect.left <= rect.right && rect.top <= rect.bottom) this.renderInk(rect);
  }

  bindPointer() {
    const point = (e) => clientToCanvas(e.clientX, e.clientY, this.ink.getBoundingClientRect(),
      this.model.width, this.model.height);
    this.ink.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      e.preventDefault();
      e.stopPropagation();
      this.syncSize();
      const p = point(e);
      if (!p) return;
      this.ink.setPointerCapture?.(e.pointerId);
      this.model.begin(p.x, p.y, this.brush, this.erase);
      this.stamp(p.x, p.y, p.x, p.y);
    });
    this.ink.addEventListener("pointermove", (e) => {
      if (!this.model.current) return;
      e.stopPropagation();
      const p = point(e);
      const seg = p && this.model.extend(p.x, p.y);
      if (!seg) return;
      this.stamp(seg[0][0], seg[0][1], seg[1][0], seg[1][1]);
      if (performance.now() - this.lastUploadAt > DRAW_UPLOAD_INTERVAL_MS) this.upload();
    });
    const finish = (e) => {
      if (!this.model.current) return;
      e.stopPropagation();
      this.model.end();
      this.upload();
    };
    this.ink.addEventListener("pointerup", finish);
    this.ink.addEventListener("pointercancel", finish);
  }

  edit(change) {
    this.syncSize();
    if (!change()) return;
    this.grey = this.model.raster();
    this.render();
    this.upload();
  }

  /** Queues an upload of the current strokes; the widget value follows when it is written. */
  upload() {
    this.lastUploadAt = performance.now();
    const grey = Uint8Array.from(this.grey);
    const { width, height } = this.model;
    this.uploads = this.uploads.then(() => this.write(grey, width, height)).catch((err) => {
      this.status.textContent = `upload failed: ${err?.message ?? err}`;
    });
    return this.uploads;
  }

  async write(grey, width, height) {
    if (grey.every((v) => v === 0)) return this.commit("");
    const name = scribbleFileName(grey, width, height);
    if (this.value === `${UPLOAD_SUBFOLDER}/${name}`) return undefined;
    const png = await encodeGreyPng(grey, width, height, { deflate });
    const body = new FormData();
    body.append("image", new File([png], name, { type: "image/png" }));
    body.append("type", "input");
    body.append("subfolder", UPLOAD_SUBFOLDER);
    body.append("overwrite", "true"); // same name = same strokes
    const res = await api.fetchApi("/upload/image", { method: "POST", body });
    if (res.status !== 200) throw new Error(`/upload/image answered ${res.status} ${res.statusText}`);
    const saved = await res.json();
    return this.commit(saved.subfolder ? `${saved.subfolder}/${saved.name}` : saved.name);
  }

  commit(value) {
    if (value === this.value) return;
    this.value = value;
    this.status.textContent = value ? `${this.model.width} x ${this.model.height} · ${value}` : "empty canvas";
    this.widget.callback?.(value);
    this.node.setDirtyCanvas?.(true, true);
    notifyChange("scribble");
  }

  /** A value set from outside (workflow load, paste): show that file as the base of new strokes. */
  async load(value) {
    if (value === this.value) return;
    this.value = value;
    this.syncSize();
    const { width: w, height: h } = this.model;
    if (!value) {
      this.model = new StrokeModel(w, h);
      this.grey = this.model.raster();
      this.render();
      this.status.textContent = "empty canvas";
      return;
    }
    try {
      const image = new Image();
      image.src = viewUrl(value, "input");
      await image.decode();
      this.syncSize();
      const c = el("canvas", { width: this.model.width, height: this.model.height });
      const ctx = c.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(image, 0, 0, c.width, c.height);
      const rgba = ctx.getImageData(0, 0, c.width, c.height).data;
      const grey = new Uint8Array(c.width * c.height);
      for (let i = 0; i < grey.length; i++) {
        const o = i * 4;
        grey[i] = Math.round((0.299 * rgba[o] + 0.587 * rgba[o + 1] + 0.114 * rgba[o + 2]) * (rgba[o + 3] / 255));
      }
      this.model.setBase(grey);
      this.grey = this.model.raster();
      this.render();
      this.status.textContent = `${c.width} x ${c.height} · ${value}`;
    } catch (err) {
      this.status.textContent = `could not load ${value}: ${err?.message ?? err}`;
    }
  }

  showBackground(item) {
    if (!item) {
      this.background = null;
      this.render();
      return;
    }
    const image = new Image();
    image.onload = () => {
      this.background = image;
      this.render();
    };
    image.src = viewUrl(item.subfolder ? `${item.subfolder}/${item.filename}` : item.filename, item.type ?? "temp");
  }

  onSideChanged() {
    if (this.syncSize() && !this.model.isBlank()) this.upload();
  }
}

app.registerExtension({
  name: "SanaSprint.ScribblePad",
  getCustomWidgets() {
    return {
      [SCRIBBLE_WIDGET_TYPE](node, inputName) {
        const pad = new Pad(node, inputName);
        pads.set(node, pad);
        return { widget: pad.widget };
      },
    };
  },
  nodeCreated(node) {
    const pad = pads.get(node);
    if (node.comfyClass !== SCRIBBLE_NODE || !pad) return;
    for (const name of ["width", "height"]) {
      const w = pad.sideWidget(name);
      if (!w) continue;
      const callback = w.callback;
      w.callback = function (...args) {
        const r = callback?.apply(this, args);
        pad.onSideChanged();
        return r;
      };
    }
    pad.syncSize();
    pad.render();
    node.setSize?.([Math.max(node.size[0], 420), Math.max(node.size[1], 560)]);
    const onRemoved = node.onRemoved;
    node.onRemoved = function (...args) {
      pads.delete(node);
      return onRemoved?.apply(this, args);
    };
  },
  loadedGraphNode(node) {
    const pad = pads.get(node);
    if (!pad) return;
    pad.syncSize();
    const brush = Number(node.properties?.sana_brush);
    if (brush >= MIN_BRUSH_SIZE && brush <= MAX_BRUSH_SIZE) { // the saved brush size
      pad.size.value = String(brush);
      pad.setBrush(brush);
    }
  },
  setup() {
    api.addEventListener("executed", ({ detail }) => {
      const node = app.graph?.getNodeById?.(String(detail?.display_node ?? detail?.node ?? ""));
      const pad = node && pads.get(node);
      if (pad) pad.showBackground(detail.output?.[BACKGROUND_KEY]?.[0]);
    });
  },
});
