/* The book's face explorer: the open face model recomputed and rendered in the browser, no kernel,
 * no network.
 *
 * Sliders for the first shape, expression and reflectance components, the 9 monochrome SH
 * coefficients and yaw / pitch drive, on every move:
 *   Eq. 2   v = a_g + sum_i (sigma_i b_i) theta_i        (shape and expression)
 *   Eq. 3   r = a_r + sum_i (sigma_i b_i) theta_i        (reflectance)
 *   Sec. 4.2  v' = Rot_xyz(pitch, yaw, 0) v
 *   Eq. 5   c = r * sum_b gamma_b H_b(n'), n' the area-weighted vertex normals of v'
 * and the image formation of facelib.render: the book's camera (facelib.render.face_camera), a
 * z-buffer with facelib.render.raster's conventions (pixel centres, back faces culled) and the shaded vertex
 * colours interpolated over each triangle; the image is drawn by plotly.js (an image trace).
 * The model comes from window.facelibExplorerData (facelib.book.explorer.write_asset);
 * facelib.book.explorer.explorer_face is the same face in Python, which the browser test compares with.
 * Test hooks: window.facelibExplorer.instances[i].params() / .set(params) / .state() / .updated.
 */
(function () {
  "use strict";

  /* ----------------------------------------------------------------------------- the data */
  function bytesOf(b64) {
    const s = atob(b64);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }

  const TYPED = {float32: Float32Array, int16: Int16Array, uint16: Uint16Array, uint32: Uint32Array};

  function view(buffer, spec) {
    const n = spec.shape.reduce((a, b) => a * b, 1);
    return new TYPED[spec.dtype](buffer, spec.offset, n);
  }

  function dequantize(q, scales, k) {
    // int16 rows (one per component) times their scale -> Float32Array
    const out = new Float32Array(q.length);
    const per = q.length / k;
    for (let c = 0; c < k; c++) {
      const s = scales[c];
      for (let i = c * per; i < (c + 1) * per; i++) out[i] = q[i] * s;
    }
    return out;
  }

  function loadModel(data) {
    const buffer = bytesOf(data.data);
    const a = {};
    for (const [name, spec] of Object.entries(data.arrays)) a[name] = view(buffer, spec);
    const model = {V: data.vertices, T: data.triangles, shPoly: data.sh_poly, light: data.default_light,
                   camera: data.camera,
                   meanShape: a.mean_shape, triangles: a.triangles,
                   meanAlbedo: dequantize(a.mean_albedo, a.mean_albedo_scale, 1)};
    for (const name of ["shape", "expression", "reflectance"]) {
      const k = data.arrays[name].shape[0];
      model[name] = {k: k, basis: dequantize(a[name], a[name + "_scale"], k)};
    }
    return model;
  }

  /* ----------------------------------------------------------------------------- the maths */
  function linear(mean, parts, out) {
    // Eq. 2 / Eq. 3: out = mean + sum over parts of sum_i theta_i (sigma_i b_i)
    out.set(mean);
    const n = mean.length;
    for (const [basis, theta] of parts) {
      for (let i = 0; i < theta.length; i++) {
        const t = theta[i];
        if (t === 0) continue;
        const b = basis.subarray(i * n, (i + 1) * n);
        for (let j = 0; j < n; j++) out[j] += t * b[j];
      }
    }
    return out;
  }

  function rotation(pitchDeg, yawDeg) {
    // Sec. 4.2 with roll 0: R = Ry(beta) Rx(alpha), row-major
    const a = pitchDeg * Math.PI / 180, b = yawDeg * Math.PI / 180;
    const ca = Math.cos(a), sa = Math.sin(a), cb = Math.cos(b), sb = Math.sin(b);
    return [cb, sb * sa, sb * ca,
            0, ca, -sa,
            -sb, cb * sa, cb * ca];
  }

  function rotate(v, R, out) {
    for (let p = 0; p < v.length; p += 3) {
      const x = v[p], y = v[p + 1], z = v[p + 2];
      out[p] = R[0] * x + R[1] * y + R[2] * z;
      out[p + 1] = R[3] * x + R[4] * y + R[5] * z;
      out[p + 2] = R[6] * x + R[7] * y + R[8] * z;
    }
    return out;
  }

  function vertexNormals(v, tri, out) {
    // facelib.render.shading.vertex_normals: sum of (v1 - v0) x (v2 - v0) over a vertex's triangles, normalised
    out.fill(0);
    for (let f = 0; f < tri.length; f += 3) {
      const i0 = 3 * tri[f], i1 = 3 * tri[f + 1], i2 = 3 * tri[f + 2];
      const ax = v[i1] - v[i0], ay = v[i1 + 1] - v[i0 + 1], az = v[i1 + 2] - v[i0 + 2];
      const bx = v[i2] - v[i0], by = v[i2 + 1] - v[i0 + 1], bz = v[i2 + 2] - v[i0 + 2];
      const nx = ay * bz - az * by, ny = az * bx - ax * bz, nz = ax * by - ay * bx;
      for (const i of [i0, i1, i2]) { out[i] += nx; out[i + 1] += ny; out[i + 2] += nz; }
    }
    for (let p = 0; p < out.length; p += 3) {
      const len = Math.max(Math.hypot(out[p], out[p + 1], out[p + 2]), 1e-12);
      out[p] /= len; out[p + 1] /= len; out[p + 2] /= len;
    }
    return out;
  }

  function shade(albedo, n, gamma, K, out) {
    // Eq. 5, monochrome light: c = r * sum_b gamma_b K_b p_b(n), p = (1, y, z, x, xy, yz, 3z^2-1, xz, x^2-y^2)
    const g = gamma.map((x, b) => x * K[b]);
    for (let p = 0; p < n.length; p += 3) {
      const x = n[p], y = n[p + 1], z = n[p + 2];
      const e = g[0] + g[1] * y + g[2] * z + g[3] * x + g[4] * x * y + g[5] * y * z
              + g[6] * (3 * z * z - 1) + g[7] * x * z + g[8] * (x * x - y * y);
      out[p] = albedo[p] * e; out[p + 1] = albedo[p + 1] * e; out[p + 2] = albedo[p + 2] * e;
    }
    return out;
  }

  function project(v, cam, out) {
    // facelib.render.camera: Phi(v) = R v + t, then u = c_x + f x / d, v = c_y - f y / d, depth d = -z
    const R = cam.R, t = cam.t, f = cam.focal, [cx, cy] = cam.principal_point;
    for (let p = 0; p < v.length; p += 3) {
      const x = R[0] * v[p] + R[1] * v[p + 1] + R[2] * v[p + 2] + t[0];
      const y = R[3] * v[p] + R[4] * v[p + 1] + R[5] * v[p + 2] + t[1];
      const d = -(R[6] * v[p] + R[7] * v[p + 1] + R[8] * v[p + 2] + t[2]);
      const inv = 1 / Math.max(d, 1e-8);
      out[p] = cx + f * x * inv; out[p + 1] = cy - f * y * inv; out[p + 2] = d;
    }
    return out;
  }

  function rasterize(s, c, tri, W, H, background, zbuf, rgba) {
    // facelib.render.raster's conventions: pixel (i, j) has its centre at (j + 0.5, i + 0.5); front faces have
    // a negative signed area in the y-down pixel frame (the others are culled), the test is inclusive,
    // the nearest depth wins; colours interpolated with perspective-correct barycentrics
    zbuf.fill(Infinity);
    const bg = Math.round(background * 255);
    for (let p = 0; p < W * H; p++) { rgba[4 * p] = rgba[4 * p + 1] = rgba[4 * p + 2] = bg; rgba[4 * p + 3] = 255; }
    for (let f = 0; f < tri.length; f += 3) {
      const a = 3 * tri[f], b = 3 * tri[f + 1], e = 3 * tri[f + 2];
      const x0 = s[a], y0 = s[a + 1], z0 = s[a + 2], x1 = s[b], y1 = s[b + 1], z1 = s[b + 2];
      const x2 = s[e], y2 = s[e + 1], z2 = s[e + 2];
      if (z0 <= 0 || z1 <= 0 || z2 <= 0) continue;
      const area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0);
      if (area > -1e-10) continue;
      const j0 = Math.max(0, Math.ceil(Math.min(x0, x1, x2) - 0.5));
      const j1 = Math.min(W - 1, Math.floor(Math.max(x0, x1, x2) - 0.5));
      const i0 = Math.max(0, Math.ceil(Math.min(y0, y1, y2) - 0.5));
      const i1 = Math.min(H - 1, Math.floor(Math.max(y0, y1, y2) - 0.5));
      for (let i = i0; i <= i1; i++) {
        const py = i + 0.5;
        for (let j = j0; j <= j1; j++) {
          const px = j + 0.5;
          const w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) / area;
          const w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) / area;
          const w2 = 1 - w0 - w1;
          if (w0 < 0 || w1 < 0 || w2 < 0) continue;
          const z = w0 * z0 + w1 * z1 + w2 * z2, p = i * W + j;
          if (z >= zbuf[p]) continue;
          zbuf[p] = z;
          const q0 = w0 / z0, q1 = w1 / z1, q2 = w2 / z2, n = 1 / (q0 + q1 + q2);
          for (let k = 0; k < 3; k++) {
            const v = (q0 * c[a + k] + q1 * c[b + k] + q2 * c[e + k]) * n;
            rgba[4 * p + k] = Math.round(Math.min(Math.max(v, 0), 1) * 255);
          }
        }
      }
    }
    return rgba;
  }

  /* ----------------------------------------------------------------------------- the page */
  const SLIDERS = (model) => [
    ["shape", "shape", model.shape.k, -3, 3, 0.1, "σ"],
    ["expression", "expression", model.expression.k, -3, 3, 0.1, "σ"],
    ["reflectance", "reflectance", model.reflectance.k, -3, 3, 0.1, "σ"],
    ["sh", "SH γ", 9, -1, 1.5, 0.01, ""],
  ];

  function slider(label, min, max, step, value, onInput) {
    const row = document.createElement("label");
    row.className = "fx-slider";
    const name = document.createElement("span");
    name.textContent = label;
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: min, max: max, step: step, value: value});
    const out = document.createElement("output");
    const show = () => { out.textContent = Number(input.value).toFixed(2); };
    show();
    input.addEventListener("input", () => { show(); onInput(); });
    row.append(name, input, out);
    return [row, input];
  }

  class Explorer {
    constructor(el, model) {
      this.el = el;
      this.model = model;
      const V = model.V;
      this.geom = new Float32Array(3 * V);
      this.verts = new Float32Array(3 * V);
      this.albedo = new Float32Array(3 * V);
      this.normals = new Float32Array(3 * V);
      this.colors = new Float32Array(3 * V);
      this.screen = new Float32Array(3 * V);
      const [H, W] = model.camera.image_size;
      this.zbuf = new Float32Array(H * W);
      this.canvas = document.createElement("canvas");
      Object.assign(this.canvas, {width: W, height: H});
      this.context = this.canvas.getContext("2d");
      this.image = this.context.createImageData(W, H);
      this.inputs = {};
      this.busy = this.dirty = this.quiet = false;
      this.updates = 0;
      this.build();
      this.schedule();
    }

    build() {
      const m = this.model;
      this.el.innerHTML = "";
      this.el.classList.add("fx-ready");
      const controls = document.createElement("div");
      controls.className = "fx-controls";
      const group = (title, rows) => {
        const box = document.createElement("fieldset");
        const legend = document.createElement("legend");
        legend.textContent = title;
        box.append(legend, ...rows);
        controls.append(box);
      };
      const pose = [];
      for (const [key, label, lo, hi] of [["yaw", "yaw β [deg]", -40, 40], ["pitch", "pitch α [deg]", -40, 40]]) {
        const [row, input] = slider(label, lo, hi, 1, 0, () => this.schedule());
        this.inputs[key] = [input];
        pose.push(row);
      }
      group("pose", pose);
      for (const [key, label, k, lo, hi, step, unit] of SLIDERS(m)) {
        const rows = [];
        this.inputs[key] = [];
        for (let i = 0; i < k; i++) {
          const value = key === "sh" ? m.light[i] : 0;
          const text = key === "sh" ? `γ${i + 1}` : `${i + 1}${unit ? " [" + unit + "]" : ""}`;
          const [row, input] = slider(text, lo, hi, step, value, () => this.schedule());
          this.inputs[key].push(input);
          rows.push(row);
        }
        group(key === "sh" ? "SH light γ (monochrome)" : `${label} components`, rows);
      }
      const reset = document.createElement("button");
      reset.type = "button";
      reset.textContent = "reset";
      reset.addEventListener("click", () => this.set({}));
      controls.append(reset);
      this.plot = document.createElement("div");
      this.plot.className = "plotly-graph-div fx-plot";
      this.plot.id = (this.el.id || "face-explorer") + "-plot";
      this.el.append(this.plot, controls);
    }

    params() {
      // the slider values: {shape: [..], expression: [..], reflectance: [..], sh: [9], yaw, pitch}
      const p = {};
      for (const [key, inputs] of Object.entries(this.inputs)) p[key] = inputs.map((x) => Number(x.value));
      p.yaw = p.yaw[0];
      p.pitch = p.pitch[0];
      return p;
    }

    set(params) {
      // set every slider (missing entries: 0, the light: its default) and redraw; returns a Promise
      this.quiet = true;  // one update for all the sliders
      for (const [key, inputs] of Object.entries(this.inputs)) {
        const given = params[key] === undefined ? [] : [].concat(params[key]);
        inputs.forEach((input, i) => {
          input.value = given[i] !== undefined ? given[i] : (key === "sh" ? this.model.light[i] : 0);
          input.dispatchEvent(new Event("input"));
        });
      }
      this.quiet = false;
      return this.schedule();
    }

    schedule() {
      // one update at a time, started at once: slider moves during an update fold into one more
      if (this.quiet) return this.updated;
      if (this.busy) {
        this.dirty = true;
        return this.updated;
      }
      this.busy = true;
      this.updated = this.draw().then((n) => {
        this.busy = false;
        if (!this.dirty) return n;
        this.dirty = false;
        return this.schedule();
      });
      return this.updated;
    }

    compute() {
      const m = this.model, p = this.params();
      linear(m.meanShape, [[m.shape.basis, p.shape], [m.expression.basis, p.expression]], this.geom);
      linear(m.meanAlbedo, [[m.reflectance.basis, p.reflectance]], this.albedo);
      rotate(this.geom, rotation(p.pitch, p.yaw), this.verts);
      vertexNormals(this.verts, m.triangles, this.normals);
      shade(this.albedo, this.normals, p.sh, m.shPoly, this.colors);
    }

    render() {
      // the image, as a PNG data URL for plotly.js
      const [H, W] = this.model.camera.image_size;
      project(this.verts, this.model.camera, this.screen);
      rasterize(this.screen, this.colors, this.model.triangles, W, H, 1.0, this.zbuf, this.image.data);
      this.context.putImageData(this.image, 0, 0);
      return this.canvas.toDataURL("image/png");
    }

    draw() {
      // resolved once the browser has drawn the frame with the new image
      this.compute();
      const source = this.render();
      return this.show(source).then(() => new Promise((resolve) => requestAnimationFrame(() => {
        this.updates++;
        resolve(this.updates);
      })));
    }

    show(source) {
      // plotly.js draws the figure once; later images only replace the pixels of the <image> it drew
      // (a full Plotly.restyle, axes and all, would cost 25 ms of the 33 ms a smooth drag has). The
      // trace keeps the new source, so a zoom or resize redraws the current image.
      const images = this.plot.querySelectorAll("g.imagelayer image");
      if (!this.plot.classList.contains("js-plotly-plot")) {
        return Plotly.newPlot(this.plot, [{type: "image", source: source, hoverinfo: "x+y"}], this.layout(),
                              {responsive: true, displaylogo: false});
      }
      if (images.length !== 1) return Plotly.restyle(this.plot, {source: [source]}, [0]);
      this.plot.data[0].source = source;
      this.plot._fullData[0].source = source;
      images[0].setAttribute("href", source);
      return Promise.resolve();
    }

    layout() {
      const [H, W] = this.model.camera.image_size;
      return {title: {text: "Face explorer (computed in this page, pixels)"},
              height: Math.round(H * 1.25) + 110, margin: {l: 60, r: 10, t: 50, b: 50},
              xaxis: {title: {text: "x [pixels]"}, range: [-0.5, W - 0.5]},
              yaxis: {title: {text: "y [pixels]"}, range: [H - 0.5, -0.5], scaleanchor: "x"}};
    }

    state() {
      // what the page shows: vertex positions (mm) and shaded colours (before clipping), flat (V * 3)
      return {verts: Array.from(this.verts), colors: Array.from(this.colors), updates: this.updates};
    }
  }

  function init() {
    const data = window.facelibExplorerData;
    const api = window.facelibExplorer = window.facelibExplorer || {instances: []};
    const els = document.querySelectorAll("div.facelib-explorer:not(.fx-ready)");
    if (!els.length) return;
    if (!data || !window.Plotly) {
      els.forEach((el) => { el.textContent = "The face explorer could not load its model or plotly.js."; });
      console.error("face explorer: window.facelibExplorerData or window.Plotly is missing");
      return;
    }
    const model = loadModel(data);
    els.forEach((el) => api.instances.push(new Explorer(el, model)));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
