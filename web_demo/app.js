// The web demo's page: loads the served model (model/model.tflite with its model_card.json, labels.txt and, when
// present, report.json) into LiteRT.js on the CPU (wasm), then classifies the camera feed and dropped photos with the
// preprocessing of classifier.js. Served by `python -m tflite_export.demo`; every request stays on that server.
import {loadAndCompile, loadLiteRt, Tensor} from '@litertjs/core';

import * as clf from './classifier.js';

const TOP = 3;
const $ = (id) => document.getElementById(id);

const state = {card: null, labels: null, spec: null, model: null, pixels: null, tensor: null, lastFrame: null};

function showMessage(text, kind = 'warning') {
  const box = $('message');
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

function setStatus(text) {
  $('status').textContent = text;
}

async function fetchOptional(name, as) {
  const response = await fetch(`model/${name}`);
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`model/${name}: HTTP ${response.status}`);
  return as === 'json' ? response.json() : as === 'bytes' ? new Uint8Array(await response.arrayBuffer()) :
    response.text();
}

/** Names for the model's classes: labels.txt, else the card's list, else "class N" (with a warning). */
function classNames(card, labelsText) {
  const count = card.output.num_classes;
  const labels = labelsText === null ? null : clf.parseLabels(labelsText);
  if (labels && labels.length === count) return {labels, warning: null};
  if (Array.isArray(card.classes) && card.classes.length === count) {
    const why = labels ? `labels.txt has ${labels.length} lines for ${count} classes` : 'no labels.txt beside the model';
    return {labels: card.classes, warning: `${why}: class names are taken from the model card`};
  }
  const why = labels ? `labels.txt has ${labels.length} lines for ${count} classes` : 'no labels.txt beside the model';
  return {labels: Array.from({length: count}, (_, i) => `class ${i}`), warning: `${why}: classes are shown by number`};
}

function formatBytes(n) {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MB` : `${(n / 1024).toFixed(1)} KB`;
}

function tensorText(t) {
  return t.dtype === 'float32' ? 'float32' : `${t.dtype} (scale ${t.scale}, zero point ${t.zero_point})`;
}

function renderPanel(card, labels, report, sizeBytes) {
  const rows = [
    ['name', card.name],
    ['classes', `${labels.length}: ${labels.slice(0, 8).join(', ')}${labels.length > 8 ? ', …' : ''}`],
    ['input', `${card.input.width}×${card.input.height} RGB, ${tensorText(card.input)}`],
    ['output', `${tensorText(card.output)}, ${card.output.activation === 'none' ? 'logits' : 'probabilities'}`],
    ['file size', formatBytes(sizeBytes)],
    ['ops', Object.entries(card.ops || {}).map(([op, n]) => `${op} ${n}`).join(', ')],
  ];
  const accuracy = report?.export?.accuracy;
  if (accuracy && typeof accuracy.int8_top1 === 'number') {
    const split = report.data?.eval_split || 'held-out';
    rows.push(['accuracy', `int8 top-1 ${(100 * accuracy.int8_top1).toFixed(1)}% on ${accuracy.images} ${split} ` +
      `images (report.json)`]);
  }
  rows.push(['runtime', 'LiteRT.js, CPU (WebAssembly), 1 thread']);
  const table = $('model-panel');
  table.replaceChildren(...rows.map(([key, value]) => {
    const tr = document.createElement('tr');
    tr.dataset.key = key;
    for (const text of [key, value]) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
}

/** Input tensor -> output values, run by LiteRT.js. */
async function infer(tensorArray) {
  const input = new Tensor(tensorArray, [1, state.spec.height, state.spec.width, 3]);
  try {
    const outputs = await state.model.run(input);
    const values = outputs[0].toTypedArray().slice();
    for (const t of outputs) t.delete();
    return values;
  } finally {
    input.delete();
  }
}

/** Decoded RGBA/RGB pixels -> the model's input tensor (reused buffers: overwritten by the next call). */
function preprocess(pixels, width, height, channels) {
  const {spec} = state;
  clf.evalResize(pixels, width, height, channels, spec.width, spec.height, state.pixels);
  return clf.quantize(state.pixels, spec, state.tensor);
}

function topOf(output) {
  return clf.topK(clf.scores(output, state.card), TOP).map(({index, score}) => ({label: state.labels[index], score}));
}

function renderTop(list, top) {
  list.replaceChildren(...top.map(({label, score}) => {
    const li = document.createElement('li');
    const name = document.createElement('span');
    name.className = 'label';
    name.textContent = label;
    const value = document.createElement('span');
    value.className = 'score';
    value.textContent = ` ${score.toFixed(3)}`;
    li.append(name, value);
    return li;
  }));
}

// ---------------------------------------------------------------------------------------------------- live camera
const camera = {stream: null, running: false, canvas: null, ctx: null, times: []};

function cameraError(error) {
  if (error.name === 'NotAllowedError' || error.name === 'SecurityError') {
    return 'camera permission denied: allow the camera for this page (the icon in the address bar) and start again';
  }
  if (error.name === 'NotFoundError' || error.name === 'OverconstrainedError') {
    return 'no camera found: connect one, or classify photos below';
  }
  if (error.name === 'NotReadableError') return 'the camera is in use by another program';
  return `the camera could not start: ${error.message || error.name}`;
}

async function startCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    showMessage('this browser gives no camera access to this page', 'error');
    return;
  }
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480}, audio: false});
  } catch (error) {
    showMessage(cameraError(error), 'error');
    return;
  }
  const video = $('video');
  video.srcObject = camera.stream;
  await video.play();
  camera.canvas = document.createElement('canvas');
  camera.ctx = camera.canvas.getContext('2d', {willReadFrequently: true});
  camera.running = true;
  camera.times = [];
  $('camera-button').textContent = 'Stop camera';
  nextFrame(video);
}

function stopCamera() {
  camera.running = false;
  for (const track of camera.stream?.getTracks() || []) track.stop();
  camera.stream = null;
  $('camera-button').textContent = 'Start camera';
}

function nextFrame(video) {
  if (!camera.running) return;
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(() => classifyFrame(video));
  else requestAnimationFrame(() => classifyFrame(video));
}

async function classifyFrame(video) {
  if (!camera.running) return;
  const width = video.videoWidth;
  const height = video.videoHeight;
  if (width && height) {
    const t0 = performance.now();
    // Only the central crop the model sees is read back (the costly part of a grab), pixel for pixel.
    const box = clf.centralCropBox(width, height);
    if (camera.canvas.width !== box.width || camera.canvas.height !== box.height) {
      camera.canvas.width = box.width;
      camera.canvas.height = box.height;
    }
    camera.ctx.drawImage(video, box.left, box.top, box.width, box.height, 0, 0, box.width, box.height);
    const frame = camera.ctx.getImageData(0, 0, box.width, box.height);
    const t1 = performance.now();
    const {spec} = state;
    const whole = {left: 0, top: 0, width: box.width, height: box.height};
    clf.resizeBilinear(frame.data, box.width, 4, whole, spec.width, spec.height, state.pixels);
    const tensor = clf.quantize(state.pixels, spec, state.tensor);
    const t2 = performance.now();
    const output = await infer(tensor);
    const t3 = performance.now();
    const top = topOf(output);
    renderTop($('camera-top'), top);
    const t4 = performance.now();
    state.lastFrame = {frame, top, output, video: {width, height}};
    recordFrame({grab: t1 - t0, preprocess: t2 - t1, inference: t3 - t2, total: t4 - t0, end: t4});
  }
  nextFrame(video);
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
};

function recordFrame(t) {
  camera.times.push(t);
  if (camera.times.length > 1000) camera.times.shift(); // the history the benchmark reads; the page shows 60
  const recent = camera.times.slice(-60);
  const span = (recent[recent.length - 1].end - recent[0].end) / 1000;
  const fps = recent.length > 1 ? (recent.length - 1) / span : 0;
  const m = (key) => median(recent.map((x) => x[key])).toFixed(1);
  $('camera-stats').textContent = `${fps.toFixed(1)} frames/s · frame to label ${m('total')} ms: grab ${m('grab')}, ` +
    `preprocess ${m('preprocess')}, inference ${m('inference')} ms (median of the last ${recent.length})`;
}

// ---------------------------------------------------------------------------------------------------- still photos
const stills = [];

async function decodeFile(file) {
  // The file's own pixels, as the pipeline decodes them: no colour management, no premultiplied alpha.
  const bitmap = await createImageBitmap(file, {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  ctx.drawImage(bitmap, 0, 0);
  return {canvas, image: ctx.getImageData(0, 0, bitmap.width, bitmap.height)};
}

async function classifyFiles(files) {
  for (const file of files) {
    const figure = document.createElement('figure');
    figure.className = 'still';
    const caption = document.createElement('figcaption');
    const name = document.createElement('div');
    name.className = 'name';
    name.textContent = file.name;
    const list = document.createElement('ol');
    list.className = 'top';
    caption.append(name, list);
    let decoded;
    try {
      decoded = await decodeFile(file);
    } catch {
      name.textContent = `${file.name}: not an image this browser can decode`;
      figure.append(caption);
      $('stills').prepend(figure);
      continue;
    }
    const {canvas, image} = decoded;
    const tensor = preprocess(image.data, image.width, image.height, 4).slice();
    const top = topOf(await infer(tensor));
    renderTop(list, top);
    figure.append(canvas, caption);
    $('stills').prepend(figure);
    stills.push({name: file.name, width: image.width, height: image.height, tensor, top});
  }
}

function setUpStills() {
  const input = $('file-input');
  input.disabled = false;
  input.addEventListener('change', () => classifyFiles([...input.files]));
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    classifyFiles([...e.dataTransfer.files].filter((f) => f.type.startsWith('image/')));
  });
}

// ---------------------------------------------------------------------------------------------------- start-up
async function load() {
  const card = await fetchOptional('model_card.json', 'json');
  if (card === null) {
    throw new Error('no model_card.json beside the model: the page needs the card for the input size and ' +
      'quantization; serve the folder tflite_export.export or the pipeline wrote (it has model_card.json)');
  }
  const problem = clf.cardProblem(card);
  if (problem) throw new Error(problem);
  const [labelsText, report] = await Promise.all([fetchOptional('labels.txt', 'text'),
    fetchOptional('report.json', 'json')]);
  const {labels, warning} = classNames(card, labelsText);
  if (warning) showMessage(warning);

  await loadLiteRt('./npm/@litertjs/core/wasm/');
  const bytes = await fetchOptional('model.tflite', 'bytes');
  if (bytes === null) throw new Error('model.tflite is missing');
  const model = await loadAndCompile(bytes, {accelerator: 'wasm', cpuOptions: {numThreads: 1}});
  const [input] = model.getInputDetails();
  const shape = Array.from(input.shape);
  if (shape.length !== 4 || shape[0] !== 1) {
    throw new Error(`the model's input shape is [${shape}]: the browser needs a fixed batch of 1`);
  }
  if (shape[1] !== card.input.height || shape[2] !== card.input.width) {
    throw new Error(`model card says ${card.input.width}×${card.input.height}, the model ${shape[2]}×${shape[1]}`);
  }
  Object.assign(state, {card, labels, model, spec: clf.inputSpec(card)});
  const size = card.input.width * card.input.height * 3;
  state.pixels = new Float32Array(size);
  state.tensor = card.input.dtype === 'float32' ? new Float32Array(size) : new Uint8Array(size);
  renderPanel(card, labels, report, bytes.length);
  setStatus(`Ready: ${card.name}`);
  $('camera-button').disabled = false;
  $('camera-button').addEventListener('click', () => (camera.running ? stopCamera() : startCamera()));
  setUpStills();
}

// What the tests (tests/test_web_demo.py) and bench/web_demo.py drive; base64 keeps the byte arrays compact.
const toBase64 = (bytes) => {
  const u8 = new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let s = '';
  for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode(...u8.subarray(i, i + 0x8000));
  return btoa(s);
};
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

window.demo = {
  ready: load().then(() => 'ready', (error) => {
    setStatus('Not loaded');
    showMessage(error.message || String(error), 'error');
    return error.message || String(error);
  }),
  startCamera,
  stopCamera,
  stills: () => stills.map(({name, width, height, top}) => ({name, width, height, top})),
  cameraTimes: () => camera.times,
  /** Resolves once `count` camera frames have been classified (false after `timeoutMs`). */
  async framesClassified(count, timeoutMs) {
    const start = performance.now();
    while (camera.times.length < count) {
      if (performance.now() - start > timeoutMs) return false;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return true;
  },
  async stillsClassified(count, timeoutMs) {
    const start = performance.now();
    while (stills.length < count) {
      if (performance.now() - start > timeoutMs) return false;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return true;
  },
  /** The last camera frame's central crop as read back (RGBA), the video's size and the labels shown for it. */
  lastFrame: () => state.lastFrame && {
    width: state.lastFrame.frame.width, height: state.lastFrame.frame.height, video: state.lastFrame.video,
    rgba: toBase64(state.lastFrame.frame.data), top: state.lastFrame.top,
  },
  stillTensor: (i) => toBase64(stills[i].tensor),
  /** Decoded pixels -> {tensor, pixels}: the input tensor and the float32 resized pixels it was quantized from. */
  preprocess: (rgb, width, height, channels) => ({
    tensor: toBase64(preprocess(fromBase64(rgb), width, height, channels)), pixels: toBase64(state.pixels),
  }),
  run: async (tensor) => toBase64(await infer(fromBase64(tensor))),
  /** Median times (ms) of preprocess and inference over `runs` calls on the given decoded pixels. */
  async time(rgb, width, height, channels, runs) {
    const pixels = fromBase64(rgb);
    const pre = [];
    const inf = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      const tensor = preprocess(pixels, width, height, channels);
      const t1 = performance.now();
      await infer(tensor);
      inf.push(performance.now() - t1);
      pre.push(t1 - t0);
    }
    return {preprocess: median(pre), inference: median(inf), inferenceAll: inf};
  },
};
