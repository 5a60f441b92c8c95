package com.mobilenetpipeline.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.ByteArrayOutputStream
import java.nio.ByteBuffer
import java.util.zip.ZipEntry
import java.util.zip.ZipOutputStream

class ModelFilesTest {
    @Test
    fun labelsWithBackgroundFirst() {
        val text = "background\ntench\ngoldfish\n\n"
        val labels = Labels.parse(text)
        assertEquals(listOf("background", "tench", "goldfish"), labels)
        assertEquals(labels, Labels.forClasses(labels, 3))
        assertEquals(listOf("tench", "goldfish"), Labels.forClasses(labels, 2))
        assertEquals(listOf("background", "tench", "goldfish"), Labels.forClasses(listOf("tench", "goldfish"), 3))
    }

    @Test
    fun labelsWithCrlfNoFinalNewlineAndIndexPrefixes() {
        assertEquals(listOf("a b", "c"), Labels.parse("a b\r\nc"))
        assertEquals(listOf("background", "tench, Tinca tinca"), Labels.parse("0  background\n1: tench, Tinca tinca\n"))
        // Numbers that are not 0, 1, 2, ... in order are part of the names.
        assertEquals(listOf("7 up", "3 musketeers"), Labels.parse("7 up\n3 musketeers\n"))
    }

    @Test
    fun modelCacheKeyFollowsEveryByteOfTheModel() {
        val model = ByteArray(4096) { (it * 31).toByte() }
        val key = ModelCacheKey.of(model)
        assertEquals(key, ModelCacheKey.of(model.copyOf()))
        assertTrue(key, Regex("tflite-[0-9a-f]{64}").matches(key))
        // One changed constant deep in the file is another model: its compiled GPU programs must not be reused.
        val edited = model.copyOf().also { it[3000] = (it[3000] + 1).toByte() }
        assertNotEquals(key, ModelCacheKey.of(edited))
        // Known SHA-256 of the empty input, so the key is the digest and not, say, a hash code.
        assertEquals(
            "tflite-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ModelCacheKey.of(ByteArray(0)),
        )
    }

    @Test(expected = IllegalArgumentException::class)
    fun labelCountMismatchIsAnError() {
        Labels.forClasses(listOf("a", "b"), 5)
    }

    @Test
    fun jsonValues() {
        val v = Json.parse("""{"a": [1, -2.5e1, true, null], "s": "x\"\u00e9\n", "o": {}}""") as Map<*, *>
        assertEquals(listOf(1.0, -25.0, true, null), v["a"])
        assertEquals("x\"\u00e9\n", v["s"])
        assertEquals(emptyMap<String, Any?>(), v["o"])
    }

    @Test(expected = Json.ParseException::class)
    fun jsonRejectsTrailingGarbage() {
        Json.parse("{} x")
    }

    @Test
    fun modelCardAsTheExporterWritesIt() {
        val card =
            ModelCard.parse(
                """
                {"schema_version": 1, "name": "mobilenet_v3_small",
                 "input": {"height": 224, "width": 192, "channels": 3, "dtype": "uint8",
                 "scale": 1.0, "zero_point": 0, "mean": [0, 0, 0], "std": [1, 1, 1]},
                 "output": {"dtype": "uint8", "scale": 0.00390625, "zero_point": 0, "num_classes": 10},
                 "labels_file": "labels.txt"}
                """.trimIndent(),
            )
        assertEquals("mobilenet_v3_small", card.name)
        assertEquals(192, card.input.width)
        assertEquals(224, card.input.height)
        assertEquals(TensorDType.UINT8, card.input.dtype)
        assertEquals(QuantParams(1f, 0), card.input.quant)
        assertArrayEquals(floatArrayOf(0f, 0f, 0f), card.input.mean, 0f)
        assertEquals(QuantParams(0.00390625f, 0), card.outputQuant)
        assertEquals(10, card.numClasses)
        assertEquals("labels.txt", card.labelsFile)
        // A float32 scale written as a Python float comes back as the same float32.
        val scale = 1f / 127f
        val c2 =
            ModelCard.parse(
                """{"schema_version": 1, "input": {"height": 1, "width": 1, "dtype": "int8", "scale": ${scale.toDouble()},
                "zero_point": -1,
                "mean": 127.5, "std": [127.5]}, "output": {"dtype": "float32", "num_classes": 2}}""",
            )
        assertEquals(
            scale.toRawBits(),
            c2.input.quant.scale
                .toRawBits(),
        )
        assertArrayEquals(FloatArray(3) { 127.5f }, c2.input.std, 0f)
        assertNull(c2.labelsFile)
    }

    @Test
    fun modelCardOfAnotherSchemaVersionIsRefused() {
        val fields =
            """"input": {"height": 1, "width": 1, "dtype": "uint8", "scale": 1.0, "zero_point": 0},
            "output": {"dtype": "uint8", "scale": 0.00390625, "zero_point": 0, "num_classes": 2}"""
        assertEquals(2, ModelCard.parse("{\"schema_version\": ${ModelCard.SCHEMA_VERSION}, $fields}").numClasses)
        for ((version, reason) in listOf(
            null to "no 'schema_version'",
            "2" to "schema_version 2",
            "\"1\"" to "not supported",
        )) {
            val json = if (version == null) "{$fields}" else "{\"schema_version\": $version, $fields}"
            val error = assertThrows(IllegalArgumentException::class.java) { ModelCard.parse(json) }
            assertTrue(error.message, error.message!!.contains(reason) && error.message!!.contains("model card"))
        }
    }

    @Test
    fun modelCardOutputActivation() {
        fun card(activation: String?): String {
            val field = if (activation == null) "" else ", \"activation\": $activation"
            return """{"schema_version": 1, "input": {"height": 1, "width": 1, "dtype": "int8", "scale": 1.0,
                "zero_point": 0}, "output": {"dtype": "int8", "scale": 0.25, "zero_point": -3, "num_classes": 3$field}}"""
        }
        assertEquals(OutputActivation.SOFTMAX, ModelCard.parse(card(null)).outputActivation)
        assertEquals(OutputActivation.SOFTMAX, ModelCard.parse(card("\"softmax\"")).outputActivation)
        assertEquals(OutputActivation.NONE, ModelCard.parse(card("\"none\"")).outputActivation)
        for (bad in listOf("\"sigmoid\"", "1")) {
            val error = assertThrows(IllegalArgumentException::class.java) { ModelCard.parse(card(bad)) }
            assertTrue(error.message, error.message!!.contains("output activation"))
        }
    }

    @Test
    fun logitsBecomeProbabilitiesInTheSameOrder() {
        fun spec(activation: OutputActivation) =
            ModelSpec(
                InputSpec(1, 1, TensorDType.INT8, QuantParams(1f, 0)),
                TensorDType.INT8,
                QuantParams(0.25f, -3),
                listOf("a", "b", "c"),
                activation,
            )
        val raw = byteArrayOf(5, -3, 9) // logits (5 + 3) / 4 = 2, 0, 3
        val logits = ClassifierCore(spec(OutputActivation.SOFTMAX)).scores(raw)
        assertArrayEquals(floatArrayOf(2f, 0f, 3f), logits, 0f)
        val core = ClassifierCore(spec(OutputActivation.NONE))
        val probabilities = core.scores(raw)
        val sum = Math.exp(2.0) + 1.0 + Math.exp(3.0)
        assertArrayEquals(
            floatArrayOf((Math.exp(2.0) / sum).toFloat(), (1.0 / sum).toFloat(), (Math.exp(3.0) / sum).toFloat()),
            probabilities,
            1e-6f,
        )
        assertEquals(listOf("c", "a", "b"), core.top(probabilities, 3).map { it.first })
        // A float logits tensor too, and large logits do not overflow.
        val floats = core.scores(floatArrayOf(1000f, 999f))
        assertArrayEquals(floatArrayOf(0.7310586f, 0.26894143f), floats, 1e-6f)
    }

    @Test
    fun zipAppendedToAModelIsRead() {
        val prefix = ByteArray(1000) { (it * 31).toByte() }
        val zipBytes = ByteArrayOutputStream()
        ZipOutputStream(zipBytes).use { z ->
            z.setMethod(ZipOutputStream.DEFLATED)
            z.putNextEntry(ZipEntry("labels.txt"))
            z.write("background\ncat\ndog\n".repeat(50).toByteArray())
            z.closeEntry()
            z.putNextEntry(ZipEntry("readme.md"))
            z.write("hello".toByteArray())
            z.closeEntry()
        }
        // Offsets relative to the archive (ZipOutputStream after a prefix), the layout a metadata writer appends.
        val files = ZipReader.read(ByteBuffer.wrap(prefix + zipBytes.toByteArray()))
        assertEquals(setOf("labels.txt", "readme.md"), files.keys)
        assertEquals("background\ncat\ndog\n".repeat(50), String(files.getValue("labels.txt")))
        assertEquals("hello", String(files.getValue("readme.md")))
        assertTrue(ZipReader.read(ByteBuffer.wrap(prefix)).isEmpty())
    }
}
