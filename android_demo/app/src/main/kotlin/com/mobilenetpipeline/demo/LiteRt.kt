package com.mobilenetpipeline.demo

import android.content.res.AssetManager
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.Environment
import com.google.ai.edge.litert.TensorBuffer
import com.mobilenetpipeline.core.Acceleration
import com.mobilenetpipeline.core.Engine
import com.mobilenetpipeline.core.EngineFactory
import com.mobilenetpipeline.core.ModelSpec
import com.mobilenetpipeline.core.TfliteModel
import com.mobilenetpipeline.core.closeIfFails
import java.io.FileNotFoundException

/** Where the model and its side files live in the APK (written by scripts/install_model.py). */
object ModelAssets {
    const val MODEL = "model.tflite"
    const val LABELS = "labels.txt"
    const val CARD = "model_card.json"

    fun exists(assets: AssetManager): Boolean = assets.list("")?.contains(MODEL) == true

    /** The model's spec: its own tensors and metadata, refined by model_card.json / labels.txt when present. */
    fun loadSpec(assets: AssetManager): ModelSpec {
        val model = TfliteModel.parse(assets.open(MODEL).use { it.readBytes() })
        return ModelSpec.resolve(model, cardJson = readText(assets, CARD), labelsText = readText(assets, LABELS))
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

/**
 * Compiles `model.tflite` from the assets with LiteRT's CompiledModel API. LiteRT copies the asset into a buffer of
 * its own (it does not memory-map it). One LiteRT [Environment] serves the GPU question and every compilation; it is
 * created on first use, so that a missing or wrong-ABI `litert_jni` surfaces inside core's `ClassifierSession`, which
 * reports it, rather than in this constructor. Use it on one thread.
 */
class LiteRtEngineFactory(
    private val assets: AssetManager,
) : EngineFactory {
    private var environment: Environment? = null

    private fun environment(): Environment = environment ?: Environment.create().also { environment = it }

    override fun gpuAvailable(): Boolean = Accelerator.GPU in environment().getAvailableAccelerators()

    override fun open(
        acceleration: Acceleration,
        threads: Int,
    ): Engine {
        val options =
            when (acceleration) {
                Acceleration.CPU -> CompiledModel.Options(Accelerator.CPU)

                // GPU alone fails for any model with an op the GPU lacks (an int8 model's QUANTIZE edges): see
                // Acceleration.GPU_AND_CPU.
                Acceleration.GPU_AND_CPU -> CompiledModel.Options(Accelerator.GPU, Accelerator.CPU)
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
