package com.mobilenetpipeline.demo

import android.content.Context
import android.content.res.AssetManager
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import com.google.ai.edge.litert.TensorBuffer
import com.mobilenetpipeline.core.Acceleration
import com.mobilenetpipeline.core.Engine
import com.mobilenetpipeline.core.EngineFactory
import com.mobilenetpipeline.core.ModelCacheKey
import com.mobilenetpipeline.core.ModelSpec
import com.mobilenetpipeline.core.TfliteModel
import com.mobilenetpipeline.core.closeIfFails
import java.io.File
import java.io.FileNotFoundException

/** Where the model and its side files live in the APK (written by scripts/install_model.py). */
object ModelAssets {
    const val MODEL = "model.tflite"
    const val LABELS = "labels.txt"
    const val CARD = "model_card.json"

    fun exists(assets: AssetManager): Boolean = assets.list("")?.contains(MODEL) == true

    /**
     * The model's spec (its own tensors and metadata, refined by model_card.json / labels.txt when present) and the
     * key its compiled GPU programs are kept under.
     */
    fun load(assets: AssetManager): BundledModel {
        val bytes = assets.open(MODEL).use { it.readBytes() }
        val spec =
            ModelSpec.resolve(
                TfliteModel.parse(bytes),
                cardJson = readText(assets, CARD),
                labelsText = readText(assets, LABELS),
            )
        return BundledModel(spec, ModelCacheKey.of(bytes))
    }

    private fun readText(
        assets: AssetManager,
        name: String,
    ): String? =
        try {
            assets.open(name).bufferedReader().use { it.readText() }
        } catch (_: FileNotFoundException) {
            null
        }
}

/** What the app knows of its model before compiling it: read once, kept across reloads. */
data class BundledModel(
    val spec: ModelSpec,
    /** [ModelCacheKey] of `model.tflite`. */
    val cacheKey: String,
)

/**
 * Compiles `model.tflite` from the assets with LiteRT's CompiledModel API. LiteRT copies the asset into a buffer of
 * its own (it does not memory-map it). One LiteRT [Environment] serves the GPU question and every compilation; it is
 * created on first use, so that a missing or wrong-ABI `litert_jni` surfaces inside core's `ClassifierSession`, which
 * reports it, rather than in this constructor. Use it on one thread.
 *
 * What a reload need not redo is kept on disk: the Environment gets the Context, which gives LiteRT its compiler
 * cache (in the app's cache dir; without a Context LiteRT turns the cache off; its sources use it for NPU
 * compilations), and a GPU compilation writes its compiled programs to [gpuCacheDir] under [modelCacheKey], from
 * where the next GPU load of the same model reads them.
 */
class LiteRtEngineFactory(
    context: Context,
    private val modelCacheKey: String,
) : EngineFactory {
    private val context: Context = context.applicationContext
    private val assets: AssetManager = this.context.assets
    private var environment: Environment? = null

    /**
     * Android empties code_cache whenever the app or the system is updated, which is when compiled GPU programs
     * may stop fitting LiteRT or the GPU driver.
     */
    private val gpuCacheDir: File by lazy { File(this.context.codeCacheDir, "litert-gpu").apply { mkdirs() } }

    private fun environment(): Environment = environment ?: Environment.create(context).also { environment = it }

    override fun gpuAvailable(): Boolean = Accelerator.GPU in environment().getAvailableAccelerators()

    override fun open(
        acceleration: Acceleration,
        threads: Int,
    ): Engine {
        val options =
            when (acceleration) {
                Acceleration.CPU -> {
                    CompiledModel.Options(Accelerator.CPU)
                }

                // GPU alone fails for any model with an op the GPU lacks (an int8 model's QUANTIZE edges): see
                // Acceleration.GPU_AND_CPU.
                Acceleration.GPU_AND_CPU -> {
                    CompiledModel.Options(Accelerator.GPU, Accelerator.CPU).apply {
                        gpuOptions =
                            CompiledModel.GpuOptions(
                                serializationDir = gpuCacheDir.path,
                                modelCacheKey = modelCacheKey,
                                serializeProgramCache = true,
                            )
                    }
                }
            }
        // Also sets the threads of the CPU part of a GPU+CPU compilation.
        options.cpuOptions = CompiledModel.CpuOptions(numThreads = threads)
        val model = CompiledModel.create(assets, ModelAssets.MODEL, options, environment())
        // A failure after create() (buffer allocation) must not leak the compiled model or the buffers made so far.
        return model.closeIfFails {
            val inputs = model.createInputBuffers()
            val closeInputs = AutoCloseable { inputs.forEach { it.close() } }
            val outputs = closeInputs.closeIfFails { model.createOutputBuffers() }
            LiteRtEngine(acceleration, model, inputs, outputs)
        }
    }

    override fun close() {
        environment?.close()
        environment = null
    }
}

/** A compiled model and its tensor buffers, created once and reused for every frame. */
private class LiteRtEngine(
    override val acceleration: Acceleration,
    private val model: CompiledModel,
    private val inputs: List<TensorBuffer>,
    private val outputs: List<TensorBuffer>,
) : Engine {
    // uint8 and int8 tensors both take raw bytes.
    override fun writeInput(values: ByteArray) = inputs[0].writeInt8(values)

    override fun writeInput(values: FloatArray) = inputs[0].writeFloat(values)

    override fun run() = model.run(inputs, outputs)

    override fun readOutputBytes(): ByteArray = outputs[0].readInt8()

    override fun readOutputFloats(): FloatArray = outputs[0].readFloat()

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
}
