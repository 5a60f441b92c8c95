// The image path of the web demo, without the DOM: model card checks, the evaluation preprocessing, quantization and
// top-k. It mirrors tflite_export/preprocessing.py and the Android core (android_demo/core/.../Preprocessing.kt,
// Quantization.kt) bit for bit: every float operation is rounded to float32 (Math.fround) in TensorFlow's order, so
// the input tensor is the one the pipeline's evaluation computes from the same decoded pixels.

export const EVAL_CROP_FRACTION = 0.875;
export const CARD_SCHEMA_VERSION = 1; // SCHEMA_VERSION in tflite_export/model_card.py

const f32 = Math.fround;

/** Why a model cannot run here, in words a user can act on; null when it can. */
export function cardProblem(card) {
  if (!card || typeof card !== 'object') return 'the model card is not a JSON object';
  if (card.schema_version !== CARD_SCHEMA_VERSION) {
    return `model card schema_version ${card.schema_version} is not supported (this page reads version ` +
      `${CARD_SCHEMA_VERSION}): re-export the model`;
  }
  const input = card.input || {};
  const output = card.output || {};
  if (input.dtype === 'int8') {
    return 'this model takes int8 input, which LiteRT.js cannot feed (browsers load only uint8 or float32 ' +
      'inputs): export it with --io uint8 (the default) to get a browser file';
  }
  if (!['uint8', 'float32'].includes(input.dtype)) return `input type ${input.dtype} is not supported`;
  if (!['uint8', 'float32'].includes(output.dtype)) {
    return `output type ${output.dtype} is not supported: export it with --io uint8 (the default)`;
  }
  if ((input.channels ?? 3) !== 3) return `only RGB (3-channel) inputs are supported, got ${input.channels}`;
  if (!(input.width > 0 && input.height > 0)) return 'the model card has no input size';
  if (input.dtype !== 'float32' && !(input.scale > 0)) return 'the model card has no input scale';
  return null;
}

/** TensorFlow's central_crop box: offset int((size - size * fraction) / 2) in float64, kept size - 2 * offset. */
export function centralCropBox(width, height, fraction = EVAL_CROP_FRACTION) {
  if (fraction === 1) return {left: 0, top: 0, width, height};
  const top = Math.trunc((height - height * fraction) / 2);
  const left = Math.trunc((width - width * fraction) / 2);
  return {left, top, width: width - 2 * left, height: height - 2 * top};
}

const axes = new Map(); // camera frames share one crop size: their tables are computed once

/** Per-axis table of TensorFlow's compute_interpolation_weights with half-pixel centres, in float32. */
function axis(outSize, inSize) {
  const key = `${outSize}/${inSize}`;
  if (!axes.has(key)) axes.set(key, axisTable(outSize, inSize));
  return axes.get(key);
}

function axisTable(outSize, inSize) {
  const scale = f32(inSize / outSize);
  const lower = new Int32Array(outSize);
  const upper = new Int32Array(outSize);
  const lerp = new Float32Array(outSize);
  for (let i = 0; i < outSize; i++) {
    const pos = f32(f32((i + 0.5) * scale) - 0.5);
    const posFloor = Math.floor(pos);
    lower[i] = Math.max(posFloor, 0);
    upper[i] = Math.min(Math.ceil(pos), inSize - 1);
    lerp[i] = f32(pos - posFloor);
  }
  return {lower, upper, lerp};
}

/**
 * Bilinear resize (half-pixel centres, no antialiasing) of `box` of an RGBA or RGB image to outWidth x outHeight
 * float32 RGB pixels (HWC, 0..255), as TensorFlow's CPU kernel computes it:
 * top = tl + (tr - tl) * xl; bottom = bl + (br - bl) * xl; out = top + (bottom - top) * yl.
 */
export function resizeBilinear(pixels, width, channels, box, outWidth, outHeight, out) {
  out = out || new Float32Array(outWidth * outHeight * 3);
  const stride = width * channels;
  const base = box.top * stride + box.left * channels;
  let o = 0;
  if (box.width === outWidth && box.height === outHeight) { // TensorFlow's no-op resize: a plain cast
    for (let y = 0; y < outHeight; y++) {
      let s = base + y * stride;
      for (let x = 0; x < outWidth; x++, s += channels) {
        out[o++] = pixels[s];
        out[o++] = pixels[s + 1];
        out[o++] = pixels[s + 2];
      }
    }
    return out;
  }
  const xs = axis(outWidth, box.width);
  const ys = axis(outHeight, box.height);
  for (let y = 0; y < outHeight; y++) {
    const rowLo = base + ys.lower[y] * stride;
    const rowHi = base + ys.upper[y] * stride;
    const yl = ys.lerp[y];
    for (let x = 0; x < outWidth; x++) {
      const lo = xs.lower[x] * channels;
      const hi = xs.upper[x] * channels;
      const xl = xs.lerp[x];
      for (let c = 0; c < 3; c++) {
        const tl = pixels[rowLo + lo + c];
        const tr = pixels[rowLo + hi + c];
        const bl = pixels[rowHi + lo + c];
        const br = pixels[rowHi + hi + c];
        const top = f32(tl + f32((tr - tl) * xl));
        const bottom = f32(bl + f32((br - bl) * xl));
        out[o++] = f32(top + f32(f32(bottom - top) * yl));
      }
    }
  }
  return out;
}

/** Central 87.5% crop + bilinear resize: the float32 pixels the pipeline's evaluation feeds the model. */
export function evalResize(pixels, width, height, channels, outWidth, outHeight, out) {
  const box = centralCropBox(width, height);
  return resizeBilinear(pixels, width, channels, box, outWidth, outHeight, out);
}

/**
 * TFLite's rounding (std::round): to nearest, ties away from zero. For a float32 value, |v| + 0.5 is exact in float64
 * (JavaScript's numbers), so floor(|v| + 0.5) is the exact answer (unlike the same sum in float32).
 */
export function roundHalfAwayFromZero(v) {
  return v < 0 ? -Math.floor(0.5 - v) : Math.floor(v + 0.5);
}

function perChannel(value, fallback) {
  if (value === undefined || value === null) return [fallback, fallback, fallback];
  if (typeof value === 'number') return [value, value, value];
  return value.length === 1 ? [value[0], value[0], value[0]] : value.slice(0, 3);
}

/** The input contract of a card: size, dtype, quantization and per-channel mean/std, as float32 values. */
export function inputSpec(card) {
  const input = card.input;
  return {
    width: input.width,
    height: input.height,
    dtype: input.dtype,
    scale: f32(input.scale || 0),
    zeroPoint: input.zero_point || 0,
    mean: perChannel(input.mean, 0).map(f32),
    std: perChannel(input.std, 1).map(f32),
  };
}

/**
 * Float pixels -> the input tensor: q = clamp(round(((p - mean) / std) / scale) + zp) for uint8 inputs (float32, in
 * that order, as tflite_export.preprocessing.quantize_input), (p - mean) / std for float32 inputs.
 */
export function quantize(pixels, spec, out) {
  const n = pixels.length;
  const [m0, m1, m2] = spec.mean;
  const [s0, s1, s2] = spec.std;
  if (spec.dtype === 'float32') {
    out = out || new Float32Array(n);
    for (let i = 0; i < n; i += 3) {
      out[i] = f32(f32(pixels[i] - m0) / s0);
      out[i + 1] = f32(f32(pixels[i + 1] - m1) / s1);
      out[i + 2] = f32(f32(pixels[i + 2] - m2) / s2);
    }
    return out;
  }
  out = out || new Uint8Array(n);
  const scale = spec.scale;
  const zp = spec.zeroPoint;
  if (scale === 1 && zp === 0 && m0 === 0 && m1 === 0 && m2 === 0 && s0 === 1 && s1 === 1 && s2 === 1) {
    // The project's own contract (raw RGB bytes in): the formula reduces to rounding the pixel, exactly.
    for (let i = 0; i < n; i++) {
      const v = Math.floor(pixels[i] + 0.5);
      out[i] = v < 0 ? 0 : v > 255 ? 255 : v;
    }
    return out;
  }
  const q = (p, m, s) => {
    const v = roundHalfAwayFromZero(f32(f32(f32(p - m) / s) / scale)) + zp;
    return v < 0 ? 0 : v > 255 ? 255 : v;
  };
  for (let i = 0; i < n; i += 3) { // channel by channel, unrolled: this runs on every camera frame
    out[i] = q(pixels[i], m0, s0);
    out[i + 1] = q(pixels[i + 1], m1, s1);
    out[i + 2] = q(pixels[i + 2], m2, s2);
  }
  return out;
}

/** An output tensor -> probabilities: dequantized (q - zp) * scale, and a softmax when the file ends at logits. */
export function scores(output, card) {
  const out = card.output;
  const values = new Float32Array(output.length);
  if (out.dtype === 'float32') {
    values.set(output);
  } else {
    const scale = f32(out.scale);
    const zp = out.zero_point;
    for (let i = 0; i < output.length; i++) values[i] = f32((output[i] - zp) * scale);
  }
  if (out.activation === 'none') softmaxInPlace(values);
  return values;
}

function softmaxInPlace(values) {
  let max = -Infinity;
  for (const v of values) max = Math.max(max, v);
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    values[i] = Math.exp(values[i] - max);
    sum += values[i];
  }
  for (let i = 0; i < values.length; i++) values[i] /= sum;
}

/** The k highest scores, best first; equal scores keep the lower class index first (the Android core's TopK). */
export function topK(values, k) {
  const best = [];
  const n = Math.min(k, values.length);
  for (let i = 0; i < values.length; i++) {
    const s = values[i];
    if (best.length === n && (n === 0 || !(s > best[n - 1].score))) continue;
    let pos = best.length; // after every entry with a score >= s, so earlier indices win ties
    while (pos > 0 && best[pos - 1].score < s) pos--;
    best.splice(pos, 0, {index: i, score: s});
    if (best.length > n) best.pop();
  }
  return best;
}

/** labels.txt -> class names: one a line, trailing blank lines dropped (tflite_export.files.read_labels). */
export function parseLabels(text) {
  const lines = text.split(/\r?\n/);
  while (lines.length && !lines[lines.length - 1].trim()) lines.pop();
  return lines;
}
