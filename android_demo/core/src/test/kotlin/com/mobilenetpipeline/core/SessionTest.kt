package com.mobilenetpipeline.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertSame
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test

/** The app's accelerator choice, fallbacks and failure notices, driven through fake LiteRT engines. */
class SessionTest {
    /** Records what it is asked; [failRun] makes [run] throw. */
    private class FakeEngine(
        override val acceleration: Acceleration,
        private val output: ByteArray,
        var failRun: Throwable? = null,
    ) : Engine {
        var closed = false
        var runs = 0
        var lastInput: ByteArray? = null

        override fun writeInput(values: ByteArray) {
            lastInput = values.copyOf()
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

    /** [gpu] answers gpuAvailable() (a Throwable is thrown); [failOpen] makes open() throw for that acceleration. */
    private class FakeFactory(
        private val gpu: Any = true,
        private val failOpen: Map<Acceleration, Throwable> = emptyMap(),
        private val failRunOn: Map<Acceleration, Throwable> = emptyMap(),
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
            return FakeEngine(acceleration, OUTPUT.copyOf(), failRunOn[acceleration]).also { opened += it }
        }

        override fun close() {
            closed = true
        }
    }

    private var now = 0L

    private fun session(factory: FakeFactory) = ClassifierSession(ClassifierCore(SPEC), factory) { now }

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
        val link = UnsatisfiedLinkError("dlopen failed: library \"liblitert_jni.so\" not found")
        val factory =
            FakeFactory(
                gpu = link,
                failOpen = mapOf(Acceleration.CPU to ExceptionInInitializerError(link)),
            )
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
    fun cpuFailureWhileRunningStopsOnceInsteadOfFailingEveryFrame() {
        val factory = FakeFactory(failRunOn = mapOf(Acceleration.CPU to IllegalStateException("bad tensor")))
        val s = session(factory)
        assertNull(s.start(Backend.CPU, 1))
        assertNull(s.classify(frame(), 3, 0))
        assertEquals(Notice.Stopped("bad tensor"), s.notice)
        assertFalse(s.running)
        val engine = factory.opened.single()
        assertTrue(engine.closed)
        assertNull(s.classify(frame(), 3, 0))
        assertEquals("a stopped session must not run the model again", 1, engine.runs)
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
        assertSame(false, Failures.isRecoverable(StackOverflowError()))
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
