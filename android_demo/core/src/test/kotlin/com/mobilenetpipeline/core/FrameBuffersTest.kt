package com.mobilenetpipeline.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertNotSame
import org.junit.Assert.assertSame
import org.junit.Test
import java.nio.ByteBuffer

/** The per-frame buffers are reused, and reusing them changes no byte. */
class FrameBuffersTest {
    private fun image(
        w: Int,
        h: Int,
        seed: Int,
    ) = RgbImage(w, h, ByteArray(w * h * 3) { (it * 7 + seed).toByte() })

    @Test
    fun rotationWritesIntoAReusedImageOfTheRightSize() {
        val target = RgbImage(3, 4)
        for ((seed, degrees) in listOf(1 to 90, 2 to 270, 3 to -90)) {
            val img = image(4, 3, seed)
            val turned = img.rotated(degrees, reuse = target)
            assertSame(target, turned)
            assertArrayEquals(img.rotated(degrees).pixels, turned.pixels)
        }
        // Wrong size, or the source itself: a new image instead of corrupting the source.
        assertNotSame(target, image(4, 3, 0).rotated(180, reuse = target))
        val square = image(3, 3, 5)
        val expected = square.rotated(90).pixels
        assertArrayEquals(expected, square.rotated(90, reuse = square).pixels)
    }

    private fun plane(
        bytes: ByteArray,
        rowStride: Int,
    ) = YuvPlane(ByteBuffer.wrap(bytes), rowStride, 1)

    @Test
    fun uprightFramesReuseBothBuffersAndMatchTheFreshPipeline() {
        val frames = UprightFrames()
        var previous: RgbImage? = null
        for (seed in 0 until 3) {
            val y = ByteArray(4 * 2) { (it * 31 + seed).toByte() }
            val u = ByteArray(2) { (90 + it * 60 + seed).toByte() }
            val v = ByteArray(2) { (200 - it * 70 - seed).toByte() }
            val got = frames.next(4, 2, plane(y, 4), plane(u, 2), plane(v, 2), rotationDegrees = 90)
            val fresh = YuvConverter.toRgb(4, 2, plane(y, 4), plane(u, 2), plane(v, 2)).rotated(90)
            assertArrayEquals(fresh.pixels, got.pixels)
            previous?.let { assertSame("a new upright image was allocated for frame $seed", it, got) }
            previous = got
        }
    }

    @Test
    fun classifierCoreReusesItsInputArraysWithoutChangingTheTensor() {
        val spec =
            ModelSpec(
                InputSpec(
                    3,
                    3,
                    TensorDType.UINT8,
                    QuantParams(1f / 127, 128),
                    floatArrayOf(127.5f, 127.5f, 127.5f),
                    floatArrayOf(127.5f, 127.5f, 127.5f),
                ),
                TensorDType.UINT8,
                QuantParams(1f / 256, 0),
                listOf("x"),
            )
        val core = ClassifierCore(spec)
        val first = core.inputBytes(image(8, 6, 1))
        for (seed in 2 until 4) {
            val img = image(8, 6, seed)
            val got = core.inputBytes(img)
            assertSame(first, got)
            assertArrayEquals(Quantization.quantize(Preprocessing.evalResize(img, 3, 3), spec.input), got)
        }
        val floatSpec =
            ModelSpec(
                InputSpec(3, 3, TensorDType.FLOAT32, QuantParams.NONE),
                TensorDType.FLOAT32,
                QuantParams.NONE,
                listOf("x"),
            )
        val floatCore = ClassifierCore(floatSpec)
        val a = floatCore.inputFloats(image(8, 6, 1))
        val img = image(8, 6, 9)
        val b = floatCore.inputFloats(img)
        assertSame(a, b)
        assertArrayEquals(Quantization.normalize(Preprocessing.evalResize(img, 3, 3), floatSpec.input), b, 0f)
    }
}
