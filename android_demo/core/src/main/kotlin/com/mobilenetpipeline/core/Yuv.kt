package com.mobilenetpipeline.core

import java.nio.ByteBuffer

/**
 * One plane of an Android `YUV_420_888` image (`ImageProxy.planes[i]`): its buffer, row stride and pixel stride, as
 * CameraX hands them over. Bytes are read with absolute indices counted from the buffer's start, so the buffer's
 * position does not matter and is left untouched.
 */
class YuvPlane(
    val buffer: ByteBuffer,
    val rowStride: Int,
    val pixelStride: Int,
) {
    init {
        require(rowStride > 0 && pixelStride > 0) { "strides must be positive" }
    }

    internal fun at(
        col: Int,
        row: Int,
    ): Int = buffer.get(row * rowStride + col * pixelStride).toInt() and 0xFF
}

/**
 * `YUV_420_888` -> RGB with the BT.601 full-range ("JFIF") matrix that Android cameras produce:
 * R = Y + 1.402 V', G = Y - 0.344136 U' - 0.714136 V', B = Y + 1.772 U' with U' = U - 128, V' = V - 128,
 * in 16.16 fixed point rounded to nearest and clamped to 0..255. Chroma is subsampled 2x2 (pixel (x, y) uses chroma
 * sample (x / 2, y / 2)); any row stride (padded rows) and pixel stride (1 = planar I420, 2 = semi-planar NV12/NV21,
 * where the U and V buffers interleave) is handled.
 */
object YuvConverter {
    private const val ONE_HALF = 1 shl 15
    private const val R_V = 91881 // 1.402 * 65536
    private const val G_U = 22554 // 0.344136 * 65536
    private const val G_V = 46802 // 0.714136 * 65536
    private const val B_U = 116130 // 1.772 * 65536

    /** Converts one pixel; public so tests can check the matrix directly. */
    fun yuvToRgb(
        y: Int,
        u: Int,
        v: Int,
    ): Int {
        val up = u - 128
        val vp = v - 128
        val base = y shl 16
        val r = clamp((base + R_V * vp + ONE_HALF) shr 16)
        val g = clamp((base - G_U * up - G_V * vp + ONE_HALF) shr 16)
        val b = clamp((base + B_U * up + ONE_HALF) shr 16)
        return (r shl 16) or (g shl 8) or b
    }

    fun toRgb(
        width: Int,
        height: Int,
        yPlane: YuvPlane,
        uPlane: YuvPlane,
        vPlane: YuvPlane,
        reuse: RgbImage? = null,
    ): RgbImage {
        val out =
            if (reuse != null && reuse.width == width &&
                reuse.height == height
            ) {
                reuse
            } else {
                RgbImage(width, height)
            }
        val px = out.pixels
        var o = 0
        for (row in 0 until height) {
            val cRow = row shr 1
            for (col in 0 until width) {
                val cCol = col shr 1
                val rgb = yuvToRgb(yPlane.at(col, row), uPlane.at(cCol, cRow), vPlane.at(cCol, cRow))
                px[o] = (rgb shr 16).toByte()
                px[o + 1] = (rgb shr 8).toByte()
                px[o + 2] = rgb.toByte()
                o += 3
            }
        }
        return out
    }

    private fun clamp(v: Int): Int =
        if (v < 0) {
            0
        } else if (v > 255) {
            255
        } else {
            v
        }
}
