package com.mobilenetpipeline.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

class PreprocessingTest {
    private fun image(
        w: Int,
        h: Int,
    ) = RgbImage(w, h, ByteArray(w * h * 3) { (it * 7 + it / 3).toByte() })

    @Test
    fun rotationMovesCornersClockwise() {
        // 3x2 image whose pixel (x, y) has R = 10 * y + x.
        val img =
            RgbImage(
                3,
                2,
                ByteArray(18) { i ->
                    if (i % 3 ==
                        0
                    ) {
                        ((i / 3) / 3 * 10 + (i / 3) % 3).toByte()
                    } else {
                        0
                    }
                },
            )
        val r90 = img.rotated(90)
        assertEquals(2, r90.width)
        assertEquals(3, r90.height)
        // Turning clockwise puts the bottom-left pixel (0, 1) at the top-left and the top-left at the top-right.
        assertEquals(10, r90[0, 0, 0])
        assertEquals(0, r90[1, 0, 0])
        assertEquals(12, r90[0, 2, 0])
        assertEquals(2, r90[1, 2, 0])
        val r180 = img.rotated(180)
        assertEquals(12, r180[0, 0, 0])
        assertEquals(0, r180[2, 1, 0])
        val r270 = img.rotated(270)
        assertEquals(2, r270[0, 0, 0])
        assertEquals(10, r270[1, 2, 0])
        assertEquals(0, r270[0, 2, 0])
        assertArrayEquals(img.pixels, img.rotated(90).rotated(270).pixels)
        assertArrayEquals(img.rotated(180).pixels, img.rotated(90).rotated(90).pixels)
        assertArrayEquals(
            img.pixels,
            img
                .rotated(90)
                .rotated(90)
                .rotated(90)
                .rotated(90)
                .pixels,
        )
        assertArrayEquals(img.rotated(270).pixels, img.rotated(-90).pixels)
    }

    @Test(expected = IllegalArgumentException::class)
    fun rotationRejectsOddAngles() {
        image(2, 2).rotated(45)
    }

    @Test
    fun cropBoxMatchesTensorFlowForOddSizes() {
        // (width, height) -> cropped (width, height), from tf.image.central_crop(image, 0.875) in TF 2.21.
        val expected =
            mapOf(
                Pair(1, 1) to Pair(1, 1),
                Pair(7, 5) to Pair(7, 5),
                Pair(225, 301) to Pair(197, 265),
                Pair(333, 500) to Pair(293, 438),
                Pair(9, 1001) to Pair(9, 877),
                Pair(16, 17) to Pair(14, 15),
                Pair(640, 480) to Pair(560, 420),
            )
        for ((size, cropped) in expected) {
            val box = Preprocessing.centralCropBox(size.first, size.second)
            assertEquals("crop of $size", cropped, Pair(box.width, box.height))
            assertEquals((size.first - box.width) / 2, box.left)
            assertEquals((size.second - box.height) / 2, box.top)
        }
        assertEquals(CropBox(14, 18, 197, 265), Preprocessing.centralCropBox(225, 301))
    }

    @Test
    fun bilinearMatchesTensorFlowBitForBit() {
        // tf.image.resize(float32 2x3 image, [5, 4], "bilinear", antialias=False) in TF 2.21, float32 values.
        val src =
            intArrayOf(0, 10, 200, 255, 20, 100, 7, 30, 0, 50, 40, 1, 60, 50, 2, 70, 60, 3)
        val img = RgbImage(3, 2, ByteArray(src.size) { src[it].toByte() })
        val expected =
            floatArrayOf(
                0.0f,
                10.0f,
                200.0f,
                159.375f,
                16.25f,
                137.5f,
                162.0f,
                23.75f,
                62.5f,
                7.0f,
                30.0f,
                0.0f,
                5.000000953674316f,
                13.000000953674316f,
                180.09999084472656f,
                149.0625f,
                19.25f,
                123.9124984741211f,
                152.1750030517578f,
                26.75f,
                56.48749923706055f,
                13.30000114440918f,
                33.0f,
                0.30000007152557373f,
                25.0f,
                25.0f,
                100.5f,
                107.8125f,
                31.25f,
                69.5625f,
                112.875f,
                38.75f,
                32.4375f,
                38.5f,
                45.0f,
                1.5f,
                45.0f,
                37.0f,
                20.900009155273438f,
                66.5625f,
                43.25f,
                15.212501525878906f,
                73.57500457763672f,
                50.75f,
                8.387500762939453f,
                63.69999694824219f,
                57.0f,
                2.6999998092651367f,
                50.0f,
                40.0f,
                1.0f,
                56.25f,
                46.25f,
                1.625f,
                63.75f,
                53.75f,
                2.375f,
                70.0f,
                60.0f,
                3.0f,
            )
        val got = Preprocessing.resizeBilinear(img, CropBox(0, 0, 3, 2), 4, 5)
        for (i in expected.indices) {
            assertEquals("element $i", expected[i].toRawBits(), got[i].toRawBits())
        }
    }

    @Test
    fun sameSizeResizeIsACast() {
        val img = image(5, 4)
        val got = Preprocessing.resizeBilinear(img, CropBox(1, 1, 3, 2), 3, 2)
        assertEquals(img[1, 1, 0].toFloat(), got[0])
        assertEquals(img[3, 2, 2].toFloat(), got[got.size - 1])
    }

    @Test
    fun roundingTiesGoAwayFromZero() {
        assertEquals(1f, roundHalfAwayFromZero(0.5f))
        assertEquals(2f, roundHalfAwayFromZero(1.5f))
        assertEquals(3f, roundHalfAwayFromZero(2.5f))
        assertEquals(-1f, roundHalfAwayFromZero(-0.5f))
        assertEquals(-3f, roundHalfAwayFromZero(-2.5f))
        assertEquals(2f, roundHalfAwayFromZero(2.4999998f))
        // std::round gives 0 here; floor(x + 0.5f) would round up because x + 0.5f rounds to 1.0f.
        assertEquals(0f, roundHalfAwayFromZero(0.49999997f))
        assertEquals(-0f, roundHalfAwayFromZero(-0.2f), 0f)
    }

    @Test
    fun quantizeRoundsExactHalvesAwayFromZeroAndClamps() {
        // std 2 makes pixels 1, 3, 5 land on exactly 0.5, 1.5, 2.5; ties-to-even would give 0, 2, 2.
        val u8 = InputSpec(1, 1, TensorDType.UINT8, QuantParams(1f, 0), std = floatArrayOf(2f, 2f, 2f))
        assertArrayEquals(byteArrayOf(1, 2, 3), Quantization.quantize(floatArrayOf(1f, 3f, 5f), u8))
        // Negative halves with int8, zero point 0: -0.5 -> -1, -1.5 -> -2; and clamping at both ends.
        val i8 =
            InputSpec(
                1,
                1,
                TensorDType.INT8,
                QuantParams(1f, 0),
                mean = floatArrayOf(1f, 3f, 0f),
                std = floatArrayOf(2f, 2f, 1f),
            )
        assertArrayEquals(byteArrayOf(-1, -2, 127), Quantization.quantize(floatArrayOf(0f, 0f, 255f), i8))
        val i8zp = InputSpec(1, 1, TensorDType.INT8, QuantParams(1f, -128))
        assertArrayEquals(byteArrayOf(-128, 0, 127), Quantization.quantize(floatArrayOf(0f, 128f, 255f), i8zp))
        // Google's reference models: scale 1/127, zero point 128, mean = std = 127.5.
        val google =
            InputSpec(
                1,
                1,
                TensorDType.UINT8,
                QuantParams(1f / 127f, 128),
                FloatArray(3) { 127.5f },
                FloatArray(3) { 127.5f },
            )
        val q = Quantization.quantize(floatArrayOf(0f, 127.5f, 255f), google)
        assertArrayEquals(byteArrayOf(1, 128.toByte(), 255.toByte()), q)
        // The project's own exports: scale 1, zero point 0, mean 0, std 1 -> the tensor is the RGB bytes.
        val own = InputSpec(1, 1, TensorDType.UINT8, QuantParams(1f, 0))
        assertArrayEquals(byteArrayOf(0, 17, 255.toByte()), Quantization.quantize(floatArrayOf(0f, 17f, 255f), own))
    }

    @Test
    fun dequantizeUsesScaleAndZeroPoint() {
        val s =
            Quantization.dequantize(
                byteArrayOf(0, 128.toByte(), 255.toByte()),
                TensorDType.UINT8,
                QuantParams(0.5f, 128),
            )
        assertArrayEquals(floatArrayOf(-64f, 0f, 63.5f), s, 0f)
        val i = Quantization.dequantize(byteArrayOf(-128, 0, 127), TensorDType.INT8, QuantParams(0.25f, -128))
        assertArrayEquals(floatArrayOf(0f, 32f, 63.75f), i, 0f)
    }

    @Test
    fun topKOrdersByScoreThenIndex() {
        val scores = floatArrayOf(0.1f, 0.5f, 0.3f, 0.5f, 0.9f, 0.3f, 0.0f)
        assertEquals(listOf(4, 1, 3, 2, 5), TopK.topK(scores, 5).map { it.index })
        assertEquals(listOf(0.9f, 0.5f, 0.5f), TopK.topK(scores, 3).map { it.score })
        assertEquals(7, TopK.topK(scores, 100).size)
        assertEquals(emptyList<Scored>(), TopK.topK(scores, 0))
        // All equal: lowest indices first.
        assertEquals(listOf(0, 1, 2), TopK.topK(FloatArray(10) { 1f }, 3).map { it.index })
    }
}
