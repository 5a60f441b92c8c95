package com.mobilenetpipeline.core

import java.io.ByteArrayOutputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.zip.Inflater

/** Shape, element type and quantization of one model tensor, read from the `.tflite` file. */
data class TensorInfo(
    val name: String,
    val shape: List<Int>,
    val dtype: TensorDType?,
    val typeCode: Int,
    val quant: QuantParams,
)

/**
 * What the app needs from a `.tflite` file without running it: the first subgraph's input and output tensors, the
 * TFLite Metadata (normalization mean/std, associated label file names) when present, and the associated files that
 * the metadata writer packs as a zip archive appended to the model. Read with a minimal FlatBuffers reader, so the
 * same code runs on the phone and in the JVM tests here.
 */
class TfliteModel private constructor(
    val inputs: List<TensorInfo>,
    val outputs: List<TensorInfo>,
    val normalizationMean: FloatArray?,
    val normalizationStd: FloatArray?,
    /** Associated files of type TENSOR_AXIS_LABELS, output tensor's first. */
    val labelFileNames: List<String>,
    private val bytes: ByteBuffer,
) {
    /** The associated files packed into the model (name -> bytes); empty when there is no archive. */
    val associatedFiles: Map<String, ByteArray> by lazy { ZipReader.read(bytes) }

    /** Labels from the model itself: the first TENSOR_AXIS_LABELS file, else any `*.txt` packed in the model. */
    fun embeddedLabels(): List<String>? {
        val files = associatedFiles
        val name = labelFileNames.firstOrNull { it in files } ?: files.keys.firstOrNull { it.endsWith(".txt") }
        return name?.let { Labels.parse(String(files.getValue(it), Charsets.UTF_8)) }
    }

    /**
     * The input spec for this model: size, type and quantization from the input tensor; mean/std from the
     * metadata's NormalizationOptions, else [defaultMean]/[defaultStd] (the model card, when the pipeline wrote one,
     * is authoritative and is applied by the caller instead).
     */
    fun inputSpec(
        defaultMean: Float = 127.5f,
        defaultStd: Float = 127.5f,
    ): InputSpec {
        val t = inputs.singleOrNull() ?: throw IllegalArgumentException("expected one input tensor, got ${inputs.size}")
        require(
            t.shape.size == 4 && t.shape[0] == 1 && t.shape[3] == 3,
        ) { "expected a [1, H, W, 3] input, got ${t.shape}" }
        val dtype = t.dtype ?: throw IllegalArgumentException("unsupported input tensor type code ${t.typeCode}")

        fun perChannel(
            v: FloatArray?,
            d: Float,
        ) = when (v?.size) {
            1 -> FloatArray(3) { v[0] }
            3 -> v.copyOf()
            else -> floatArrayOf(d, d, d)
        }
        return InputSpec(
            width = t.shape[2],
            height = t.shape[1],
            dtype = dtype,
            quant = t.quant,
            mean = perChannel(normalizationMean, defaultMean),
            std = perChannel(normalizationStd, defaultStd),
        )
    }

    companion object {
        private const val TYPE_FLOAT32 = 0
        private const val TYPE_UINT8 = 3
        private const val TYPE_INT8 = 9
        private const val ASSOCIATED_FILE_TENSOR_AXIS_LABELS = 2
        private const val PROCESS_UNIT_NORMALIZATION = 1

        fun parse(model: ByteArray): TfliteModel = parse(ByteBuffer.wrap(model))

        fun parse(model: ByteBuffer): TfliteModel {
            val buf = model.duplicate().order(ByteOrder.LITTLE_ENDIAN)
            buf.position(0)
            require(buf.limit() >= 8) { "not a TFLite model (too short)" }
            val ident = ByteArray(4) { buf.get(4 + it) }
            require(String(ident, Charsets.US_ASCII) == "TFL3") { "not a TFLite model (no TFL3 identifier)" }
            val fb = FlatBuffer(buf)
            val root = fb.root()
            val subgraphs = fb.tables(root, 2)
            require(subgraphs.isNotEmpty()) { "model has no subgraph" }
            val sg = subgraphs[0]
            val tensors = fb.tables(sg, 0)
            val buffers = fb.tables(root, 4)

            fun tensor(i: Int): TensorInfo {
                val t = tensors[i]
                val code = fb.byteField(t, 1, 0)
                val dtype =
                    when (code) {
                        TYPE_FLOAT32 -> TensorDType.FLOAT32
                        TYPE_UINT8 -> TensorDType.UINT8
                        TYPE_INT8 -> TensorDType.INT8
                        else -> null
                    }
                val q = fb.table(t, 4)
                val quant =
                    if (q == null) {
                        QuantParams.NONE
                    } else {
                        val scales = fb.floats(q, 2)
                        val zps = fb.longs(q, 3)
                        if (scales.isEmpty()) {
                            QuantParams.NONE
                        } else {
                            QuantParams(
                                scales[0],
                                zps.firstOrNull()?.toInt() ?: 0,
                            )
                        }
                    }
                return TensorInfo(fb.string(t, 3) ?: "", fb.ints(t, 0).toList(), dtype, code, quant)
            }
            val inputs = fb.ints(sg, 1).map { tensor(it) }
            val outputs = fb.ints(sg, 2).map { tensor(it) }

            // TFLite Metadata: Model.metadata[] entry named TFLITE_METADATA points at a buffer holding a ModelMetadata.
            var mean: FloatArray? = null
            var std: FloatArray? = null
            val labelFiles = ArrayList<String>()
            for (m in fb.tables(root, 6)) {
                if (fb.string(m, 0) != "TFLITE_METADATA") continue
                val bufferIndex = fb.intField(m, 1, -1)
                if (bufferIndex !in buffers.indices) continue
                val data = fb.vectorRange(buffers[bufferIndex], 0) ?: continue
                val meta = FlatBuffer(fb.slice(data.first, data.second))
                val mm = meta.root()
                val sgm = meta.tables(mm, 3).firstOrNull() ?: continue
                for (inputMeta in meta.tables(sgm, 2).take(1)) {
                    for (pu in meta.tables(inputMeta, 4)) {
                        if (meta.byteField(pu, 0, 0) != PROCESS_UNIT_NORMALIZATION) continue
                        val opts = meta.table(pu, 1) ?: continue
                        mean = meta.floats(opts, 0).takeIf { it.isNotEmpty() }
                        std = meta.floats(opts, 1).takeIf { it.isNotEmpty() }
                    }
                }
                val fileTables = meta.tables(sgm, 3).flatMap { meta.tables(it, 6) } + meta.tables(mm, 6)
                for (f in fileTables) {
                    val name = meta.string(f, 0) ?: continue
                    if (meta.byteField(f, 2, 0) == ASSOCIATED_FILE_TENSOR_AXIS_LABELS) labelFiles.add(name)
                }
            }
            return TfliteModel(inputs, outputs, mean, std, labelFiles, buf)
        }
    }
}

/** Just enough FlatBuffers to walk a table graph (little-endian, absolute offsets into [b]). */
internal class FlatBuffer(
    private val b: ByteBuffer,
) {
    init {
        b.order(ByteOrder.LITTLE_ENDIAN)
    }

    fun root(): Int = b.getInt(0)

    fun slice(
        start: Int,
        length: Int,
    ): ByteBuffer {
        val d = b.duplicate()
        d.position(start)
        d.limit(start + length)
        return d.slice().order(ByteOrder.LITTLE_ENDIAN)
    }

    /** Absolute position of field [id] of the table at [table], or 0 when absent. */
    private fun field(
        table: Int,
        id: Int,
    ): Int {
        val vtable = table - b.getInt(table)
        val vsize = b.getShort(vtable).toInt() and 0xFFFF
        val slot = 4 + 2 * id
        if (slot >= vsize) return 0
        val off = b.getShort(vtable + slot).toInt() and 0xFFFF
        return if (off == 0) 0 else table + off
    }

    private fun deref(pos: Int): Int = pos + b.getInt(pos)

    fun byteField(
        table: Int,
        id: Int,
        default: Int,
    ): Int {
        val p = field(table, id)
        return if (p == 0) default else b.get(p).toInt() and 0xFF
    }

    fun intField(
        table: Int,
        id: Int,
        default: Int,
    ): Int {
        val p = field(table, id)
        return if (p == 0) default else b.getInt(p)
    }

    fun table(
        table: Int,
        id: Int,
    ): Int? {
        val p = field(table, id)
        return if (p == 0) null else deref(p)
    }

    fun string(
        table: Int,
        id: Int,
    ): String? {
        val r = vectorRange(table, id) ?: return null
        val bytes = ByteArray(r.second)
        for (i in bytes.indices) bytes[i] = b.get(r.first + i)
        return String(bytes, Charsets.UTF_8)
    }

    /** (start, element count) of the vector in field [id]. */
    fun vectorRange(
        table: Int,
        id: Int,
    ): Pair<Int, Int>? {
        val p = field(table, id)
        if (p == 0) return null
        val v = deref(p)
        return Pair(v + 4, b.getInt(v))
    }

    fun tables(
        table: Int,
        id: Int,
    ): List<Int> {
        val (start, n) = vectorRange(table, id) ?: return emptyList()
        return List(n) { deref(start + 4 * it) }
    }

    fun ints(
        table: Int,
        id: Int,
    ): IntArray {
        val (start, n) = vectorRange(table, id) ?: return IntArray(0)
        return IntArray(n) { b.getInt(start + 4 * it) }
    }

    fun longs(
        table: Int,
        id: Int,
    ): LongArray {
        val (start, n) = vectorRange(table, id) ?: return LongArray(0)
        return LongArray(n) { b.getLong(start + 8 * it) }
    }

    fun floats(
        table: Int,
        id: Int,
    ): FloatArray {
        val (start, n) = vectorRange(table, id) ?: return FloatArray(0)
        return FloatArray(n) { b.getFloat(start + 4 * it) }
    }
}

/**
 * Reads the zip archive that the TFLite metadata writer appends to a model (stored or deflated entries). Works
 * whether the archive's offsets count from the start of the model file or from the start of the archive.
 */
internal object ZipReader {
    private const val EOCD = 0x06054b50
    private const val CEN = 0x02014b50
    private const val LOC = 0x04034b50

    fun read(data: ByteBuffer): Map<String, ByteArray> {
        val b = data.duplicate().order(ByteOrder.LITTLE_ENDIAN)
        val n = b.limit()
        var eocd = -1
        var i = n - 22
        val stop = maxOf(0, n - 22 - 65535)
        while (i >= stop) {
            if (b.getInt(i) == EOCD) {
                eocd = i
                break
            }
            i--
        }
        if (eocd < 0) return emptyMap()
        val entries = b.getShort(eocd + 10).toInt() and 0xFFFF
        val cdSize = b.getInt(eocd + 12)
        val cdOffset = b.getInt(eocd + 16)
        // The central directory ends where the EOCD record starts; the difference is the archive's own offset.
        val shift = eocd - cdSize - cdOffset
        if (shift < 0) return emptyMap()
        val out = LinkedHashMap<String, ByteArray>()
        var p = cdOffset + shift
        repeat(entries) {
            if (b.getInt(p) != CEN) return out
            val method = b.getShort(p + 10).toInt() and 0xFFFF
            val compressed = b.getInt(p + 20)
            val size = b.getInt(p + 24)
            val nameLen = b.getShort(p + 28).toInt() and 0xFFFF
            val extraLen = b.getShort(p + 30).toInt() and 0xFFFF
            val commentLen = b.getShort(p + 32).toInt() and 0xFFFF
            val local = b.getInt(p + 42) + shift
            val name = String(ByteArray(nameLen) { k -> b.get(p + 46 + k) }, Charsets.UTF_8)
            p += 46 + nameLen + extraLen + commentLen
            if (b.getInt(local) != LOC) return@repeat
            val dataStart =
                local + 30 + (b.getShort(local + 26).toInt() and 0xFFFF) + (b.getShort(local + 28).toInt() and 0xFFFF)
            val raw = ByteArray(compressed) { k -> b.get(dataStart + k) }
            out[name] =
                when (method) {
                    0 -> raw
                    8 -> inflate(raw, size)
                    else -> return@repeat
                }
        }
        return out
    }

    private fun inflate(
        raw: ByteArray,
        size: Int,
    ): ByteArray {
        val inf = Inflater(true)
        try {
            inf.setInput(raw)
            val out = ByteArrayOutputStream(size)
            val chunk = ByteArray(8192)
            while (!inf.finished()) {
                val k = inf.inflate(chunk)
                if (k == 0 && (inf.needsInput() || inf.needsDictionary())) break
                out.write(chunk, 0, k)
            }
            return out.toByteArray()
        } finally {
            inf.end()
        }
    }
}
