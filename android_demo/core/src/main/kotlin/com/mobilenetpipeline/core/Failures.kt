package com.mobilenetpipeline.core

/** Which failures the app survives, and how it names them in one line. */
object Failures {
    private const val MAX_REASON_LENGTH = 160
    const val NO_GPU = "this device has no GPU accelerator that LiteRT can use"

    /**
     * Exceptions, and the linkage errors that a missing or wrong-ABI `litert_jni` raises (UnsatisfiedLinkError,
     * ExceptionInInitializerError, NoClassDefFoundError on a later use of the same class). Those are Errors, so a
     * plain `catch (e: Exception)` lets them kill the camera's analysis thread and the app. Anything else
     * (OutOfMemoryError, StackOverflowError) still propagates.
     */
    fun isRecoverable(t: Throwable): Boolean = t is Exception || t is LinkageError

    /**
     * A single line for the screen: the first line of the message (or the class name), at most 160 characters. A
     * linkage error is named by what caused it rather than by its wrapper: the cause of an
     * ExceptionInInitializerError, and of a NoClassDefFoundError that carries one (ART attaches the error of the
     * failed class initialization to the NoClassDefFoundError of every later use).
     */
    fun reason(t: Throwable): String {
        val root = linkageRoot(t)
        val detail =
            root.message
                ?.lineSequence()
                ?.map { it.trim() }
                ?.firstOrNull { it.isNotEmpty() }
                ?: root.javaClass.simpleName
        val text =
            when (root) {
                is UnsatisfiedLinkError -> "LiteRT's native library could not be loaded ($detail)"
                is LinkageError -> "${root.javaClass.simpleName}: $detail"
                else -> detail
            }
        return if (text.length <= MAX_REASON_LENGTH) text else text.take(MAX_REASON_LENGTH - 1) + "…"
    }

    private fun linkageRoot(t: Throwable): Throwable {
        var root = t
        while (root is ExceptionInInitializerError || root is NoClassDefFoundError) {
            val cause = root.cause
            if (cause == null || cause === root) break
            root = cause
        }
        return root
    }
}

/**
 * Remembers the first linkage failure of the process and gives it back for the NoClassDefFoundErrors that follow.
 *
 * LiteRT's classes load `litert_jni` in their static initializers. When the library is missing or built for another
 * ABI, the first use of such a class throws the UnsatisfiedLinkError itself (an initializer's Error is rethrown as
 * is, JLS 12.4.2). The JVM never runs a failed initializer again: every later use of the class throws
 * NoClassDefFoundError ("Could not initialize class ..." on HotSpot, the class name on ART), which names neither the
 * library nor what went wrong, and on HotSpot 17 carries no cause. Such a failure lasts as long as the process, so
 * the app keeps one instance for its whole process and every [ClassifierSession] reports through it.
 */
class LinkageFailures {
    @Volatile private var first: LinkageError? = null

    /**
     * What to report for [t]: the first linkage failure seen when [t] is a later NoClassDefFoundError, otherwise
     * [t] itself. A linkage failure other than NoClassDefFoundError is remembered if it is the first.
     */
    fun explain(t: Throwable): Throwable {
        if (t !is LinkageError) return t
        val earlier = first
        if (earlier == null) {
            if (t !is NoClassDefFoundError) first = t
            return t
        }
        return if (t is NoClassDefFoundError) earlier else t
    }
}
