package com.mobilenetpipeline.core

/** Element types of the image classifier tensors this app supports. */
enum class TensorDType(
    val bytesPerElement: Int,
    val min: Int,
    val max: Int,
) {
    FLOAT32(4, 0, 0),
    UINT8(1, 0, 255),
    INT8(1, -128, 127),
    ;

    val isQuantized: Boolean get() = this != FLOAT32

    companion object {
        /** From the names the model card and TFLite use ("uint8", "int8", "float32"). */
        fun parse(name: String): TensorDType =
            when (name.trim().lowercase()) {
                "uint8" -> UINT8
                "int8" -> INT8
                "float32", "float" -> FLOAT32
                else -> throw IllegalArgumentException("unsupported tensor dtype '$name'")
            }
    }
}

/** Affine quantization of a tensor: real = scale * (q - zeroPoint). A float tensor has scale 0 here. */
data class QuantParams(
    val scale: Float,
    val zeroPoint: Int,
) {
    companion object {
        val NONE = QuantParams(0f, 0)
    }
}

/**
 * How camera pixels (float, 0..255) become the model's input tensor:
 * `q = clamp(roundHalfAwayFromZero(((p - mean) / std) / scale) + zeroPoint)` in float32, in that order, for integer
 * tensors (as the Python pipeline's `quantize_input` and TFLite do), or `(p - mean) / std` for float32 tensors.
 */
class InputSpec(
    val width: Int,
    val height: Int,
    val dtype: TensorDType,
    val quant: QuantParams,
    val mean: FloatArray = floatArrayOf(0f, 0f, 0f),
    val std: FloatArray = floatArrayOf(1f, 1f, 1f),
    val channels: Int = 3,
) {
    init {
        require(width > 0 && height > 0) { "input size must be positive" }
        require(channels == 3) { "only RGB (3-channel) inputs are supported, got $channels channels" }
        require(mean.size == 3 && std.size == 3) { "mean and std need one value per channel" }
        require(std.all { it != 0f }) { "std must not be zero" }
        require(!dtype.isQuantized || quant.scale > 0f) { "a $dtype input needs a positive scale" }
    }

    val byteSize: Int get() = width * height * channels * dtype.bytesPerElement

    override fun toString(): String =
        "InputSpec(${width}x${height}x$channels $dtype scale=${quant.scale} zp=${quant.zeroPoint} " +
            "mean=${mean.toList()} std=${std.toList()})"
}

object Quantization {
    /** Pixels (HWC float32) -> integer tensor bytes for a UINT8/INT8 input (two's complement for INT8). */
    fun quantize(
        pixels: FloatArray,
        spec: InputSpec,
        out: ByteArray = ByteArray(pixels.size),
    ): ByteArray {
        require(spec.dtype.isQuantized) { "quantize() needs an integer input, got ${spec.dtype}" }
        require(out.size == pixels.size) { "output array has the wrong size" }
        val scale = spec.quant.scale
        val zp = spec.quant.zeroPoint.toFloat()
        val lo = spec.dtype.min.toFloat()
        val hi = spec.dtype.max.toFloat()
        for (i in pixels.indices) {
            val c = i % 3
            val normalized = (pixels[i] - spec.mean[c]) / spec.std[c]
            var q = roundHalfAwayFromZero(normalized / scale) + zp
            if (q < lo) q = lo
            if (q > hi) q = hi
            out[i] = q.toInt().toByte()
        }
        return out
    }

    /** Pixels (HWC float32) -> normalized float32 values for a FLOAT32 input. */
    fun normalize(
        pixels: FloatArray,
        spec: InputSpec,
        out: FloatArray = FloatArray(pixels.size),
    ): FloatArray {
        require(out.size == pixels.size) { "output array has the wrong size" }
        for (i in pixels.indices) out[i] = (pixels[i] - spec.mean[i % 3]) / spec.std[i % 3]
        return out
    }

    /** Integer tensor bytes -> real values: `(q - zeroPoint) * scale` in float32. */
    fun dequantize(
        values: ByteArray,
        dtype: TensorDType,
        quant: QuantParams,
    ): FloatArray {
        require(dtype.isQuantized) { "dequantize() needs an integer tensor, got $dtype" }
        val zp = quant.zeroPoint.toFloat()
        return FloatArray(values.size) { i ->
            val q = if (dtype == TensorDType.UINT8) values[i].toInt() and 0xFF else values[i].toInt()
            (q.toFloat() - zp) * quant.scale
        }
    }
}

/** One class and its score. */
data class Scored(
    val index: Int,
    val score: Float,
)

object TopK {
    /** The [k] highest scores, best first; equal scores keep the lower class index first (a stable order). */
    fun topK(
        scores: FloatArray,
        k: Int,
    ): List<Scored> {
        require(k >= 0) { "k must be >= 0" }
        val n = minOf(k, scores.size)
        val best = ArrayList<Scored>(n + 1)
        for (i in scores.indices) {
            val s = scores[i]
            if (best.size == n && (n == 0 || !(s > best[n - 1].score))) continue
            // Insert after every entry with a score >= s, so earlier indices win ties.
            var pos = best.size
            while (pos > 0 && best[pos - 1].score < s) pos--
            best.add(pos, Scored(i, s))
            if (best.size > n) best.removeAt(best.size - 1)
        }
        return best
    }
}
