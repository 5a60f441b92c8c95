package com.mobilenetpipeline.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test
import java.nio.ByteBuffer

class YuvConverterTest {
    private fun rgb(
        r: Int,
        g: Int,
        b: Int,
    ) = (r shl 16) or (g shl 8) or b

    @Test
    fun matrixIsBt601FullRange() {
        assertEquals(rgb(128, 128, 128), YuvConverter.yuvToRgb(128, 128, 128))
        assertEquals(rgb(0, 0, 0), YuvConverter.yuvToRgb(0, 128, 128))
        assertEquals(rgb(255, 255, 255), YuvConverter.yuvToRgb(255, 128, 128))
        // Y=100, V'=+100: R = 100 + 140.2, G = 100 - 71.41, B = 100.
        assertEquals(rgb(240, 29, 100), YuvConverter.yuvToRgb(100, 128, 228))
        // Y=100, U'=+50: R = 100, G = 100 - 17.2, B = 100 + 88.6.
        assertEquals(rgb(100, 83, 189), YuvConverter.yuvToRgb(100, 178, 128))
        // JFIF red (255, 0, 0) is Y=76.245, U=84.97, V=255.5; the nearest 8-bit YUV (76, 85, 255) comes back as
        // R = 76 + 1.402 * 127 = 254.05, G = 0.09, B = -0.2 -> (254, 0, 0).
        assertEquals(rgb(254, 0, 0), YuvConverter.yuvToRgb(76, 85, 255))
        // Saturation clamps both ways.
        assertEquals(rgb(255, 66, 255), YuvConverter.yuvToRgb(200, 255, 255))
        assertEquals(rgb(0, 145, 0), YuvConverter.yuvToRgb(10, 0, 0))
    }

    /**
     * A 4x2 frame as an NV21-style camera buffer: the Y plane's rows padded to 8 bytes, U and V interleaved in one
     * buffer (pixel stride 2, row stride 8), padding filled with 0xEE that must never be read.
     */
    @Test
    fun paddedRowsAndPixelStrideTwo() {
        val width = 4
        val height = 2
        val ys = intArrayOf(10, 50, 100, 200, 30, 60, 90, 250)
        val yBytes = ByteArray(16) { 0xEE.toByte() }
        for (r in 0 until height) for (c in 0 until width) yBytes[r * 8 + c] = ys[r * width + c].toByte()
        // Two chroma samples: (U, V) = (128, 228) for x 0..1 and (178, 128) for x 2..3; VU interleaved like NV21.
        val vu = ByteArray(8) { 0xEE.toByte() }
        vu[0] = 228.toByte()
        vu[1] = 128.toByte()
        vu[2] = 128.toByte()
        vu[3] = 178.toByte()
        val whole = ByteBuffer.wrap(vu)
        val vPlane = YuvPlane(whole.duplicate(), rowStride = 8, pixelStride = 2)
        val uPlane = YuvPlane(ByteBuffer.wrap(vu, 1, 7).slice(), rowStride = 8, pixelStride = 2)
        val yPlane = YuvPlane(ByteBuffer.wrap(yBytes), rowStride = 8, pixelStride = 1)
        val img = YuvConverter.toRgb(width, height, yPlane, uPlane, vPlane)
        for (r in 0 until height) {
            for (c in 0 until width) {
                val y = ys[r * width + c]
                val expected = if (c < 2) YuvConverter.yuvToRgb(y, 128, 228) else YuvConverter.yuvToRgb(y, 178, 128)
                val got = rgb(img[c, r, 0], img[c, r, 1], img[c, r, 2])
                assertEquals("pixel ($c, $r)", expected, got)
            }
        }
        // Pixel (0, 1): second row, first chroma sample (Y=30, V'=+100), G clamps at 0.
        assertEquals(rgb(170, 0, 30), rgb(img[0, 1, 0], img[0, 1, 1], img[0, 1, 2]))
        // Pixel (2, 0) has Y=100 and U'=+50.
        assertEquals(rgb(100, 83, 189), rgb(img[2, 0, 0], img[2, 0, 1], img[2, 0, 2]))

        // The same frame as planar I420 (pixel stride 1, tight rows) gives the same RGB bytes.
        val planarY = YuvPlane(ByteBuffer.wrap(ByteArray(8) { ys[it].toByte() }), 4, 1)
        val planarU = YuvPlane(ByteBuffer.wrap(byteArrayOf(128.toByte(), 178.toByte())), 2, 1)
        val planarV = YuvPlane(ByteBuffer.wrap(byteArrayOf(228.toByte(), 128.toByte())), 2, 1)
        assertArrayEquals(img.pixels, YuvConverter.toRgb(width, height, planarY, planarU, planarV).pixels)
    }
}
