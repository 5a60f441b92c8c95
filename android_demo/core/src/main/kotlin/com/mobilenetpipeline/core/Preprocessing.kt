package com.mobilenetpipeline.core

import kotlin.math.abs
import kotlin.math.ceil
import kotlin.math.floor

/** A rectangle of an image in pixels. */
data class CropBox(
    val left: Int,
    val top: Int,
    val width: Int,
    val height: Int,
)

/**
 * The evaluation preprocessing of the Python pipeline (`tflite_export/preprocessing.py`: `eval_resize`), reproduced bit
 * for bit: `tf.image.central_crop(image, 0.875)` then `tf.image.resize(float32, [h, w], "bilinear", antialias=False)`
 * (TensorFlow's ResizeBilinear kernel with half-pixel centres), all in float32 with TensorFlow's order of operations.
 */
object Preprocessing {
    const val EVAL_CROP_FRACTION = 0.875

    /**
     * TensorFlow's `central_crop` box: the offset is `int((size - size * fraction) / 2)` computed in float64 and
     * truncated, and the kept size is `size - 2 * offset` (so an odd margin loses its odd pixel at the far edge).
     */
    fun centralCropBox(
        width: Int,
        height: Int,
        fraction: Double = EVAL_CROP_FRACTION,
    ): CropBox {
        require(fraction > 0.0 && fraction <= 1.0) { "crop fraction must be in (0, 1], got $fraction" }
        if (fraction == 1.0) return CropBox(0, 0, width, height)
        val top = ((height.toDouble() - height.toDouble() * fraction) / 2).toInt()
        val left = ((width.toDouble() - width.toDouble() * fraction) / 2).toInt()
        return CropBox(left, top, width - 2 * left, height - 2 * top)
    }

    /** Per-axis interpolation table, as TensorFlow's `compute_interpolation_weights` with `HalfPixelScaler`. */
    private class Axis(
        val lower: IntArray,
        val upper: IntArray,
        val lerp: FloatArray,
    )

    private fun axis(
        outSize: Int,
        inSize: Int,
    ): Axis {
        val scale = inSize.toFloat() / outSize.toFloat()
        val lower = IntArray(outSize)
        val upper = IntArray(outSize)
        val lerp = FloatArray(outSize)
        for (i in 0 until outSize) {
            val pos = (i.toFloat() + 0.5f) * scale - 0.5f
            val posFloor = floor(pos)
            lower[i] = maxOf(posFloor.toInt(), 0)
            upper[i] = minOf(ceil(pos).toInt(), inSize - 1)
            lerp[i] = pos - posFloor
        }
        return Axis(lower, upper, lerp)
    }

    /**
     * Bilinear resize of the [box] of [image] to [outWidth] x [outHeight] float32 pixels (HWC, RGB, values 0..255),
     * matching TensorFlow's CPU kernel: `top = tl + (tr - tl) * xl; bottom = bl + (br - bl) * xl;
     * out = top + (bottom - top) * yl` with no fused multiply-add.
     */
    fun resizeBilinear(
        image: RgbImage,
        box: CropBox,
        outWidth: Int,
        outHeight: Int,
        out: FloatArray = FloatArray(outWidth * outHeight * 3),
    ): FloatArray {
        require(box.left >= 0 && box.top >= 0 && box.width > 0 && box.height > 0) { "bad crop box $box" }
        require(box.left + box.width <= image.width && box.top + box.height <= image.height) {
            "crop box $box outside ${image.width}x${image.height}"
        }
        require(out.size == outWidth * outHeight * 3) { "output array has the wrong size" }
        val px = image.pixels
        val stride = image.width * 3
        val base = box.top * stride + box.left * 3
        if (box.width == outWidth && box.height == outHeight) {
            // TensorFlow's no-op resize: a plain cast.
            var o = 0
            for (y in 0 until outHeight) {
                var s = base + y * stride
                for (i in 0 until outWidth * 3) {
                    out[o++] = (px[s++].toInt() and 0xFF).toFloat()
                }
            }
            return out
        }
        val xs = axis(outWidth, box.width)
        val ys = axis(outHeight, box.height)
        var o = 0
        for (y in 0 until outHeight) {
            val rowLo = base + ys.lower[y] * stride
            val rowHi = base + ys.upper[y] * stride
            val yl = ys.lerp[y]
            for (x in 0 until outWidth) {
                val cLo = xs.lower[x] * 3
                val cHi = xs.upper[x] * 3
                val xl = xs.lerp[x]
                for (c in 0 until 3) {
                    val tl = (px[rowLo + cLo + c].toInt() and 0xFF).toFloat()
                    val tr = (px[rowLo + cHi + c].toInt() and 0xFF).toFloat()
                    val bl = (px[rowHi + cLo + c].toInt() and 0xFF).toFloat()
                    val br = (px[rowHi + cHi + c].toInt() and 0xFF).toFloat()
                    val top = tl + (tr - tl) * xl
                    val bottom = bl + (br - bl) * xl
                    out[o++] = top + (bottom - top) * yl
                }
            }
        }
        return out
    }

    /**
     * Central 87.5% crop + bilinear resize: the float32 pixels the evaluation feeds the model, written into [out]
     * (pass the same array every frame to avoid an allocation per frame).
     */
    fun evalResize(
        image: RgbImage,
        outWidth: Int,
        outHeight: Int,
        fraction: Double = EVAL_CROP_FRACTION,
        out: FloatArray = FloatArray(outWidth * outHeight * 3),
    ): FloatArray = resizeBilinear(image, centralCropBox(image.width, image.height, fraction), outWidth, outHeight, out)
}

/** Rounding as TFLite does it (`TfLiteRound`, i.e. `std::round`): to nearest, ties away from zero. */
fun roundHalfAwayFromZero(v: Float): Float {
    val a = abs(v)
    val f = floor(a)
    // a - f is exact in float arithmetic, so this never double-rounds (unlike floor(a + 0.5f) at 0.49999997f).
    val r = if (a - f >= 0.5f) f + 1f else f
    return if (v < 0f) -r else r
}
