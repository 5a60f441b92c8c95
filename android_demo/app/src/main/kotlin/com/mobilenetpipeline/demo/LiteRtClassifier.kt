package com.mobilenetpipeline.demo

import android.content.res.AssetManager
import android.os.SystemClock
import android.util.Log
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import com.mobilenetpipeline.core.ClassifierCore
import com.mobilenetpipeline.core.ModelSpec
import com.mobilenetpipeline.core.RgbImage
import com.mobilenetpipeline.core.TensorDType
import com.mobilenetpipeline.core.TfliteModel
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

enum class Backend { CPU, GPU }

/** One classification: the best labels with their scores and how long it took. */
data class Classification(
    val top: List<Pair<String, Float>>,
    val inferenceMs: Double,
    val frameMs: Double,
)

/**
 * LiteRT CompiledModel around the pure-Kotlin [ClassifierCore]. Not thread-safe: create, use and close it on one
 * thread (the analysis executor).
 */
class LiteRtClassifier private constructor(
    val core: ClassifierCore,
    private val model: CompiledModel,
    val backend: Backend,
    val threads: Int,
    /** Why the GPU was not used when it was asked for, else null. */
    val fallbackReason: String?,
) : AutoCloseable {
    private val inputs: List<TensorBuffer> = model.createInputBuffers()
    private val outputs: List<TensorBuffer> = model.createOutputBuffers()

    /** Classifies an upright RGB frame. [frameStartNs] is when the camera frame arrived (for the frame time). */
    fun classify(
        frame: RgbImage,
        topK: Int,
        frameStartNs: Long,
    ): Classification {
        val spec = core.spec
        if (spec.input.dtype == TensorDType.FLOAT32) {
            inputs[0].writeFloat(core.inputFloats(frame))
        } else {
            // uint8 and int8 tensors both take raw bytes.
            inputs[0].writeInt8(core.inputBytes(frame))
        }
        val t0 = SystemClock.elapsedRealtimeNanos()
        model.run(inputs, outputs)
        val t1 = SystemClock.elapsedRealtimeNanos()
        val scores =
            if (spec.outputDType == TensorDType.FLOAT32) {
                outputs[0].readFloat()
            } else {
                core.scores(outputs[0].readInt8())
            }
        val top = core.top(scores, topK)
        val end = SystemClock.elapsedRealtimeNanos()
        return Classification(top, (t1 - t0) / 1e6, (end - frameStartNs) / 1e6)
    }

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }

    companion object {
        private const val TAG = "LiteRtClassifier"

        /**
         * Loads the model from assets on [backend]. A GPU request that fails (no GPU accelerator on the device,
         * unsupported ops, driver problems) falls back to the CPU and says why in [fallbackReason].
         */
        fun create(
            assets: AssetManager,
            backend: Backend,
            threads: Int,
        ): LiteRtClassifier {
            val core = ClassifierCore(ModelAssets.loadSpec(assets))
            if (backend == Backend.GPU) {
                try {
                    val gpu =
                        CompiledModel.create(
                            assets,
                            ModelAssets.MODEL,
                            CompiledModel.Options(Accelerator.GPU),
                            null,
                        )
                    return LiteRtClassifier(core, gpu, Backend.GPU, threads, null)
                } catch (e: Exception) {
                    Log.w(TAG, "GPU unavailable, falling back to CPU", e)
                    return LiteRtClassifier(
                        core,
                        cpuModel(assets, threads),
                        Backend.CPU,
                        threads,
                        e.message ?: e.javaClass.simpleName,
                    )
                }
            }
            return LiteRtClassifier(core, cpuModel(assets, threads), Backend.CPU, threads, null)
        }

        private fun cpuModel(
            assets: AssetManager,
            threads: Int,
        ): CompiledModel {
            val options = CompiledModel.Options(Accelerator.CPU)
            options.cpuOptions = CompiledModel.CpuOptions(numThreads = threads)
            return CompiledModel.create(assets, ModelAssets.MODEL, options, null)
        }
    }
}
