package com.mobilenetpipeline.core

import java.security.MessageDigest

/**
 * The name under which LiteRT's GPU accelerator keeps the programs it compiled for a model (`GpuOptions.modelCacheKey`),
 * so that a reload reads them back instead of compiling again. LiteRT asks for a key unique to the model's graph and
 * constants: a digest of the whole file is, and it changes whenever an install replaces the model.
 */
object ModelCacheKey {
    /** "tflite-" and the SHA-256 of [model] in lower-case hex: the same for the same bytes, safe in a file name. */
    fun of(model: ByteArray): String =
        "tflite-" + MessageDigest.getInstance("SHA-256").digest(model).joinToString("") { "%02x".format(it) }
}
