package com.mobilenetpipeline.core

/** The accelerator the user picks in the app. */
enum class Backend { CPU, GPU }

/**
 * The accelerator set a model is compiled for, and what the screen calls it. The GPU is never asked for alone:
 * LiteRT's CompiledModel refuses a GPU-only compilation that leaves any op on the CPU ("Some ops are not
 * accelerated. Add kLiteRtHwAcceleratorCpu ..."), and the QUANTIZE / DEQUANTIZE edges of an int8 model are such ops,
 * so a GPU-only request would always fail for the project's own exports.
 */
enum class Acceleration(
    val label: String,
) {
    CPU("CPU"),

    /** The GPU runs the ops it supports, the CPU the rest. */
    GPU_AND_CPU("GPU+CPU"),
}

/**
 * One model compiled for one [Acceleration]: LiteRT's CompiledModel with its tensor buffers in the app, a fake in
 * the tests. The methods map one-to-one onto LiteRT's TensorBuffer and CompiledModel calls.
 */
interface Engine : AutoCloseable {
    val acceleration: Acceleration

    /** Input tensor bytes of a UINT8/INT8 model. */
    fun writeInput(values: ByteArray)

    /** Input tensor values of a FLOAT32 model. */
    fun writeInput(values: FloatArray)

    fun run()

    fun readOutputBytes(): ByteArray

    fun readOutputFloats(): FloatArray
}

/** Compiles the model. Either call may throw anything LiteRT throws, including linkage errors. */
interface EngineFactory : AutoCloseable {
    /** Whether the device has a GPU accelerator that LiteRT can use. */
    fun gpuAvailable(): Boolean

    fun open(
        acceleration: Acceleration,
        threads: Int,
    ): Engine

    override fun close() = Unit
}

/** What the screen tells the user besides the results. The app maps each kind to a string resource. */
sealed class Notice {
    /** No `model.tflite` in the app's assets. */
    data object NoModel : Notice()

    /** The GPU was asked for and could not be used; the model runs on the CPU. */
    data class GpuUnavailable(
        val reason: String,
    ) : Notice()

    /** The GPU compiled the model but failed while running it; the session moved to the CPU. */
    data class GpuFailedWhileRunning(
        val reason: String,
    ) : Notice()

    /** The model could not be loaded on any accelerator: nothing runs. */
    data class LoadFailed(
        val reason: String,
    ) : Notice()

    /** Inference failed on the CPU as well: classification stopped until the model is reloaded. */
    data class Stopped(
        val reason: String,
    ) : Notice()

    /**
     * Whether the screen offers to load the model again: nothing runs, and a new [ClassifierSession.start] with the
     * same accelerator and thread count may change that. Picking the accelerator or thread count already selected
     * does not reload, so without this offer the user would have no way to retry.
     */
    val offersReload: Boolean get() = this is LoadFailed || this is Stopped
}

/**
 * Runs [block] on this resource; if [block] throws anything, closes the resource before rethrowing (a failure to
 * close is kept as a suppressed exception). For multi-step constructions of native handles, where a later step's
 * failure must not leak what the earlier steps created.
 */
inline fun <T : AutoCloseable, R> T.closeIfFails(block: (T) -> R): R {
    try {
        return block(this)
    } catch (t: Throwable) {
        try {
            close()
        } catch (closing: Throwable) {
            t.addSuppressed(closing)
        }
        throw t
    }
}

/** One classified frame, with what produced it. */
data class Classification(
    val top: List<Pair<String, Float>>,
    /** The model run alone (write input, run, read output). */
    val inferenceMs: Double,
    /** From the camera frame's arrival to the scores: conversion, rotation, preprocessing and inference. */
    val frameMs: Double,
    val acceleration: Acceleration,
    val threads: Int,
)

/**
 * The app's model lifecycle, free of Android and LiteRT so that the JVM tests can drive every failure: which
 * accelerators to try, the fallback to the CPU at load time and at run time, and the [Notice] for each failure.
 * Not thread-safe: create, use and close it on one thread (the app's analysis executor).
 */
class ClassifierSession(
    val core: ClassifierCore,
    private val factory: EngineFactory,
    /** The process's one [LinkageFailures]: a native-library failure outlives the session that first met it. */
    private val linkageFailures: LinkageFailures,
    private val clock: () -> Long = System::nanoTime,
) : AutoCloseable {
    private var engine: Engine? = null
    private var threads = 1

    /** Why the model does not run as asked, or null. */
    var notice: Notice? = null
        private set

    /** Whether a model is compiled: the camera frames are worth converting only then. */
    val running: Boolean get() = engine != null

    /** The accelerator set the model runs on now, or null when nothing runs. */
    val acceleration: Acceleration? get() = engine?.acceleration

    /**
     * (Re)compiles the model for [requested] with [threads] CPU threads. A GPU request that fails (no GPU
     * accelerator, a compilation error, a missing native library) falls back to the CPU; the returned [notice] says
     * why. Returns [Notice.LoadFailed] when the CPU fails as well.
     */
    fun start(
        requested: Backend,
        threads: Int,
    ): Notice? {
        require(threads > 0) { "threads must be positive, got $threads" }
        closeEngine()
        this.threads = threads
        var gpuProblem: String? = null
        if (requested == Backend.GPU) {
            try {
                if (factory.gpuAvailable()) {
                    engine = factory.open(Acceleration.GPU_AND_CPU, threads)
                    notice = null
                    return null
                }
                gpuProblem = Failures.NO_GPU
            } catch (t: Throwable) {
                gpuProblem = recoverableReason(t)
            }
        }
        notice =
            try {
                engine = factory.open(Acceleration.CPU, threads)
                gpuProblem?.let { Notice.GpuUnavailable(it) }
            } catch (t: Throwable) {
                Notice.LoadFailed(recoverableReason(t))
            }
        return notice
    }

    /**
     * Classifies an upright frame that arrived at [frameStartNs] (on [clock]). Returns null when nothing runs, then
     * [notice] says why. A failure of the engine (writing the input, running, reading the output) on the GPU moves
     * the session to the CPU and retries the frame there, once; a failure on the CPU stops the session, so a broken
     * model is reported once instead of on every frame.
     */
    fun classify(
        frame: RgbImage,
        topK: Int,
        frameStartNs: Long,
    ): Classification? {
        if (engine == null) return null
        val input =
            try {
                ModelInput.of(core, frame)
            } catch (t: Throwable) {
                // Preprocessing cannot get better on another accelerator: its failure stops the session.
                stop(recoverableReason(t))
                return null
            }
        return infer(input, topK, frameStartNs)
    }

    private fun infer(
        input: ModelInput,
        topK: Int,
        frameStartNs: Long,
    ): Classification? {
        val current = engine ?: return null
        val scores: FloatArray
        val inferenceNs: Long
        try {
            val start = clock()
            // Inside the engine's try: LiteRT locks the GPU engine's input buffer to write it, and that can fail.
            input.writeTo(current)
            current.run()
            scores =
                if (core.spec.outputDType == TensorDType.FLOAT32) {
                    core.scores(current.readOutputFloats())
                } else {
                    core.scores(current.readOutputBytes())
                }
            inferenceNs = clock() - start
        } catch (t: Throwable) {
            val reason = recoverableReason(t)
            if (current.acceleration == Acceleration.CPU) {
                stop(reason)
                return null
            }
            closeEngine()
            try {
                engine = factory.open(Acceleration.CPU, threads)
            } catch (cpu: Throwable) {
                stop(recoverableReason(cpu))
                return null
            }
            notice = Notice.GpuFailedWhileRunning(reason)
            return infer(input, topK, frameStartNs)
        }
        val top = core.top(scores, topK)
        return Classification(top, inferenceNs / 1e6, (clock() - frameStartNs) / 1e6, current.acceleration, threads)
    }

    /**
     * Stops the session after a failure outside it (the camera frame's conversion, say): the model is closed and
     * [notice] says why. Rethrows what the app must not swallow.
     */
    fun stop(failure: Throwable) = stop(recoverableReason(failure))

    override fun close() {
        closeEngine()
        factory.close()
    }

    private fun stop(reason: String) {
        closeEngine()
        notice = Notice.Stopped(reason)
    }

    private fun closeEngine() {
        val old = engine ?: return
        engine = null
        try {
            old.close()
        } catch (t: Throwable) {
            // The engine is being dropped either way: a failed close leaves nothing to retry or to tell the user.
            if (!Failures.isRecoverable(t)) throw t
        }
    }

    /** The screen's reason for [t]; rethrows what the app must not swallow (see [Failures.isRecoverable]). */
    private fun recoverableReason(t: Throwable): String {
        if (!Failures.isRecoverable(t)) throw t
        return Failures.reason(linkageFailures.explain(t))
    }
}

/** The model's input tensor for one frame, built once and written to whichever engine runs the frame. */
private class ModelInput private constructor(
    private val bytes: ByteArray?,
    private val floats: FloatArray?,
) {
    fun writeTo(engine: Engine) {
        if (floats != null) engine.writeInput(floats) else engine.writeInput(checkNotNull(bytes))
    }

    companion object {
        fun of(
            core: ClassifierCore,
            frame: RgbImage,
        ): ModelInput =
            if (core.spec.input.dtype == TensorDType.FLOAT32) {
                ModelInput(null, core.inputFloats(frame))
            } else {
                ModelInput(core.inputBytes(frame), null)
            }
    }
}
