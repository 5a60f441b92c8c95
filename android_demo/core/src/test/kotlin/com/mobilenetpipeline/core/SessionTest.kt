package com.mobilenetpipeline.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertSame
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The app's accelerator choice, fallbacks and failure notices, driven through fake LiteRT engines. */
class SessionTest {
    /** Records what it is asked; [failWrite] makes [writeInput] throw (after recording), [failRun] makes [run] throw. */
    private class FakeEngine(
        override val acceleration: Acceleration,
        private val output: ByteArray,
        var failRun: Throwable? = null,
        var failWrite: Throwable? = null,
    ) : Engine {
        var closed = false
        var runs = 0
        var lastInput: ByteArray? = null

        override fun writeInput(values: ByteArray) {
            check(!closed) { "write to a closed engine" }
            lastInput = values.copyOf()
            failWrite?.let { throw it }
        }

        override fun writeInput(values: FloatArray) = throw AssertionError("the test model takes uint8")

        override fun run() {
            check(!closed) { "run on a closed engine" }
            runs++
            failRun?.let { throw it }
        }

        override fun readOutputBytes(): ByteArray = output

        override fun readOutputFloats(): FloatArray = throw AssertionError("the test model returns uint8")

        override fun close() {
            closed = true
        }
    }

    /**
     * [gpu] answers gpuAvailable() (a Throwable is thrown); [failOpen] makes open() throw for that acceleration;
     * [failRunOn] and [failWriteOn] make the engines opened for that acceleration fail in run() or writeInput().
     */
    private class FakeFactory(
        private val gpu: Any = true,
        private val failOpen: Map<Acceleration, Throwable> = emptyMap(),
        private val failRunOn: Map<Acceleration, Throwable> = emptyMap(),
        private val failWriteOn: Map<Acceleration, Throwable> = emptyMap(),
    ) : EngineFactory {
        val opened = mutableListOf<FakeEngine>()
        val openedThreads = mutableListOf<Int>()
        var closed = false

        override fun gpuAvailable(): Boolean = if (gpu is Throwable) throw gpu else gpu as Boolean

        override fun open(
            acceleration: Acceleration,
            threads: Int,
        ): Engine {
            failOpen[acceleration]?.let { throw it }
            openedThreads += threads
            return FakeEngine(acceleration, OUTPUT.copyOf(), failRunOn[acceleration], failWriteOn[acceleration])
                .also { opened += it }
        }

        override fun close() {
            closed = true
        }
    }

    private var now = 0L

    private fun session(factory: FakeFactory) =
        ClassifierSession(ClassifierCore(SPEC), factory, LinkageFailures(), clock = { now })

    private fun frame() = RgbImage(4, 4, ByteArray(48) { (it * 5).toByte() })

    @Test
    fun gpuIsCompiledTogetherWithTheCpuAndShown() {
        val factory = FakeFactory(gpu = true)
        val s = session(factory)
        assertNull(s.start(Backend.GPU, threads = 2))
        // Never the GPU alone: LiteRT rejects a GPU-only compilation that leaves QUANTIZE edges on the CPU.
        assertEquals(listOf(Acceleration.GPU_AND_CPU), factory.opened.map { it.acceleration })
        assertEquals(listOf(2), factory.openedThreads)
        now = 5_000_000
        val result = s.classify(frame(), 3, frameStartNs = 1_000_000)!!
        assertEquals(Acceleration.GPU_AND_CPU, result.acceleration)
        assertEquals("GPU+CPU", result.acceleration.label)
        assertEquals(2, result.threads)
        // Top 3 with their dequantized scores (output scale 1/256), best first.
        assertEquals(listOf("c" to 200 / 256f, "a" to 100 / 256f, "d" to 50 / 256f), result.top)
        assertEquals(4.0, result.frameMs, 1e-9)
        assertEquals(0.0, result.inferenceMs, 1e-9)
    }

    @Test
    fun cpuRequestNeverAsksForTheGpu() {
        val factory = FakeFactory(gpu = IllegalStateException("must not be asked"))
        val s = session(factory)
        assertNull(s.start(Backend.CPU, threads = 4))
        assertEquals(Acceleration.CPU, s.acceleration)
        assertEquals(listOf(4), factory.openedThreads)
    }

    @Test
    fun gpuRequestWithoutAGpuRunsOnTheCpuAndSaysWhy() {
        val factory = FakeFactory(gpu = false)
        val s = session(factory)
        assertEquals(Notice.GpuUnavailable(Failures.NO_GPU), s.start(Backend.GPU, 1))
        assertEquals(listOf(Acceleration.CPU), factory.opened.map { it.acceleration })
        assertEquals(Acceleration.CPU, s.classify(frame(), 3, 0)!!.acceleration)
    }

    @Test
    fun gpuCompilationFailureFallsBackToTheCpu() {
        val factory =
            FakeFactory(gpu = true, failOpen = mapOf(Acceleration.GPU_AND_CPU to RuntimeException("no OpenCL\nstack")))
        val s = session(factory)
        assertEquals(Notice.GpuUnavailable("no OpenCL"), s.start(Backend.GPU, 1))
        assertEquals(Acceleration.CPU, s.acceleration)
    }

    @Test
    fun missingNativeLibraryIsReportedInsteadOfCrashing() {
        // The first use of a class whose static initializer loads the library throws the library's own error.
        val link = UnsatisfiedLinkError("dlopen failed: library \"liblitert_jni.so\" not found")
        val factory = FakeFactory(gpu = link, failOpen = mapOf(Acceleration.CPU to link))
        val s = session(factory)
        val notice = s.start(Backend.GPU, 1)
        assertEquals(
            Notice.LoadFailed(
                "LiteRT's native library could not be loaded (dlopen failed: library \"liblitert_jni.so\" not found)",
            ),
            notice,
        )
        assertFalse(s.running)
        assertNull(s.classify(frame(), 3, 0))
    }

    @Test
    fun aReloadAfterANativeLibraryFailureStillNamesTheLibrary() {
        // Each load is a new session, as in the app; the process, and so the failed class, stays.
        val thrown = mutableListOf<Throwable>()
        val factory =
            object : EngineFactory {
                override fun gpuAvailable() = false

                override fun open(
                    acceleration: Acceleration,
                    threads: Int,
                ): Engine {
                    try {
                        NativeBacked.use()
                    } catch (t: Throwable) {
                        thrown += t
                        throw t
                    }
                    throw AssertionError("the library loaded: ${NativeBacked.LIBRARY} must not exist")
                }
            }
        val linkage = LinkageFailures()
        val first = ClassifierSession(ClassifierCore(SPEC), factory, linkage).start(Backend.GPU, 1)
        val second = ClassifierSession(ClassifierCore(SPEC), factory, linkage).start(Backend.CPU, 2)
        // What the JVM really throws: the library's error first, then NoClassDefFoundError for every later use.
        assertTrue(thrown[0].toString(), thrown[0] is UnsatisfiedLinkError)
        assertTrue(thrown[1].toString(), thrown[1] is NoClassDefFoundError)
        assertTrue(thrown[1].message!!.startsWith("Could not initialize class "))
        val reason = (first as Notice.LoadFailed).reason
        assertTrue(reason, reason.startsWith("LiteRT's native library could not be loaded (no ${NativeBacked.LIBRARY}"))
        assertEquals("the second load must name the library too", first, second)
        // Without the first failure kept, the second error would not name it.
        assertNotEquals(reason, Failures.reason(thrown[1]))
    }

    @Test
    fun errorsTheAppCannotSurviveStillPropagate() {
        val s = session(FakeFactory(failOpen = mapOf(Acceleration.CPU to OutOfMemoryError("heap"))))
        try {
            s.start(Backend.CPU, 1)
            fail("OutOfMemoryError was swallowed")
        } catch (expected: OutOfMemoryError) {
            assertEquals("heap", expected.message)
        }
    }

    @Test
    fun gpuFailureWhileRunningMovesToTheCpuOnceAndRetriesTheFrame() {
        val factory =
            FakeFactory(gpu = true, failRunOn = mapOf(Acceleration.GPU_AND_CPU to RuntimeException("GPU lost")))
        val s = session(factory)
        assertNull(s.start(Backend.GPU, 2))
        val result = s.classify(frame(), 3, 0)!!
        assertEquals(Acceleration.CPU, result.acceleration)
        assertEquals(Notice.GpuFailedWhileRunning("GPU lost"), s.notice)
        val (gpu, cpu) = factory.opened
        assertTrue("the failed GPU model must be closed", gpu.closed)
        assertEquals(listOf(2, 2), factory.openedThreads)
        // Later frames stay on the CPU: no recompilation per frame.
        s.classify(frame(), 3, 0)
        assertEquals(2, factory.opened.size)
        assertEquals(2, cpu.runs)
        // The CPU engine got the same bytes the GPU engine was given.
        assertTrue(gpu.lastInput!!.contentEquals(cpu.lastInput!!))
    }

    @Test
    fun gpuFailureWhileWritingTheInputMovesToTheCpuAndRetriesTheFrame() {
        // LiteRT locks a GPU engine's input buffer to write it; a failed lock throws from the write.
        val factory =
            FakeFactory(
                gpu = true,
                failWriteOn = mapOf(Acceleration.GPU_AND_CPU to RuntimeException("Failed to lock the tensor buffer")),
            )
        val s = session(factory)
        assertNull(s.start(Backend.GPU, 2))
        val result = s.classify(frame(), 3, 0)!!
        assertEquals(Acceleration.CPU, result.acceleration)
        assertEquals(listOf("c" to 200 / 256f, "a" to 100 / 256f, "d" to 50 / 256f), result.top)
        assertEquals(Notice.GpuFailedWhileRunning("Failed to lock the tensor buffer"), s.notice)
        val (gpu, cpu) = factory.opened
        assertTrue("the failed GPU model must be closed", gpu.closed)
        assertEquals("the GPU model must not run after its input failed", 0, gpu.runs)
        assertTrue(gpu.lastInput!!.contentEquals(cpu.lastInput!!))
        assertEquals(1, cpu.runs)
    }

    @Test
    fun cpuFailureWhileWritingOrRunningStopsOnceInsteadOfFailingEveryFrame() {
        val failure = IllegalStateException("bad tensor")
        val failingWrite = FakeFactory(failWriteOn = mapOf(Acceleration.CPU to failure))
        val failingRun = FakeFactory(failRunOn = mapOf(Acceleration.CPU to failure))
        // The engine's run count when it failed: a failed write never reaches run().
        for ((factory, runs) in listOf(failingWrite to 0, failingRun to 1)) {
            val s = session(factory)
            assertNull(s.start(Backend.CPU, 1))
            assertNull(s.classify(frame(), 3, 0))
            assertEquals(Notice.Stopped("bad tensor"), s.notice)
            assertFalse(s.running)
            val engine = factory.opened.single()
            assertTrue(engine.closed)
            assertNull(s.classify(frame(), 3, 0))
            assertEquals("a stopped session must not run the model again", runs, engine.runs)
        }
    }

    @Test
    fun aStopOffersAReloadAndTheReloadRunsTheModelAgain() {
        val factory = FakeFactory()
        val s = session(factory)
        assertNull(s.start(Backend.CPU, 2))
        factory.opened.single().failRun = IllegalStateException("busy")
        assertNull(s.classify(frame(), 3, 0))
        val stopped = s.notice!!
        assertTrue(stopped.offersReload)
        // The reload action: the same accelerator and thread count again.
        assertNull(s.start(Backend.CPU, 2))
        assertNull(s.notice)
        assertEquals(Acceleration.CPU, s.classify(frame(), 3, 0)!!.acceleration)
        assertEquals(2, factory.opened.size)
        assertTrue(Notice.LoadFailed("x").offersReload)
        // These leave a model running, or (no model in the app) nothing a reload could change.
        assertFalse(Notice.GpuUnavailable("x").offersReload)
        assertFalse(Notice.GpuFailedWhileRunning("x").offersReload)
        assertFalse(Notice.NoModel.offersReload)
    }

    @Test
    fun aFailureOutsideTheSessionStopsIt() {
        val factory = FakeFactory()
        val s = session(factory)
        s.start(Backend.CPU, 1)
        s.stop(IndexOutOfBoundsException("plane too small"))
        assertEquals(Notice.Stopped("plane too small"), s.notice)
        assertFalse(s.running)
        assertTrue(factory.opened.single().closed)
    }

    @Test
    fun restartClosesThePreviousEngineAndCloseReleasesTheFactory() {
        val factory = FakeFactory(gpu = true)
        val s = session(factory)
        s.start(Backend.GPU, 1)
        s.start(Backend.CPU, 4)
        assertTrue(factory.opened[0].closed)
        assertFalse(factory.opened[1].closed)
        s.close()
        assertTrue(factory.opened[1].closed)
        assertTrue(factory.closed)
    }

    @Test
    fun closeIfFailsClosesOnAnyThrowableAndOnlyThen() {
        class Resource : AutoCloseable {
            var closed = false

            override fun close() {
                closed = true
                throw IllegalStateException("close failed too")
            }
        }
        val ok = Resource()
        assertEquals(7, ok.closeIfFails { 7 })
        assertFalse(ok.closed)
        val failing = Resource()
        try {
            failing.closeIfFails { throw UnsatisfiedLinkError("no lib") }
            fail("the block's error was swallowed")
        } catch (e: UnsatisfiedLinkError) {
            assertTrue(failing.closed)
            assertEquals("close failed too", e.suppressed.single().message)
        }
    }

    @Test
    fun reasonsAreOneShortLine() {
        assertEquals("IllegalStateException", Failures.reason(IllegalStateException()))
        assertEquals("first", Failures.reason(RuntimeException("\n  first  \nsecond")))
        val long = Failures.reason(RuntimeException("x".repeat(500)))
        assertEquals(160, long.length)
        assertTrue(long.endsWith("…"))
        assertEquals(
            "NoClassDefFoundError: Could not initialize class Environment",
            Failures.reason(NoClassDefFoundError("Could not initialize class Environment")),
        )
        // ART's later-use error: the class name, with the initializer's error attached as the cause.
        val art = NoClassDefFoundError("com.google.ai.edge.litert.Environment")
        art.initCause(
            UnsatisfiedLinkError("dlopen failed: \"liblitert_jni.so\" is for EM_X86_64 (62) instead of EM_AARCH64"),
        )
        assertEquals(
            "LiteRT's native library could not be loaded (dlopen failed: \"liblitert_jni.so\" is for EM_X86_64 (62) " +
                "instead of EM_AARCH64)",
            Failures.reason(art),
        )
        assertSame(false, Failures.isRecoverable(StackOverflowError()))
    }

    /** Loads a library that does not exist in its static initializer, as LiteRT's Environment loads litert_jni. */
    private class NativeBacked {
        companion object {
            const val LIBRARY = "litert_jni_absent_from_the_tests"

            init {
                System.loadLibrary(LIBRARY)
            }

            fun use() = Unit
        }
    }

    private companion object {
        val SPEC =
            ModelSpec(
                InputSpec(2, 2, TensorDType.UINT8, QuantParams(1f, 0)),
                TensorDType.UINT8,
                QuantParams(1f / 256, 0),
                listOf("a", "b", "c", "d"),
            )
        val OUTPUT = byteArrayOf(100, 10, 200.toByte(), 50)
    }
}
