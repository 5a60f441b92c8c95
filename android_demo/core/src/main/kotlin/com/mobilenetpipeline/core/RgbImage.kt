package com.mobilenetpipeline.core

/** An 8-bit RGB image, rows top to bottom, pixels interleaved R, G, B (the layout TFLite image models take). */
class RgbImage(
    val width: Int,
    val height: Int,
    val pixels: ByteArray = ByteArray(width * height * 3),
) {
    init {
        require(width > 0 && height > 0) { "image size must be positive, got ${width}x$height" }
        require(pixels.size == width * height * 3) {
            "expected ${width * height * 3} bytes for ${width}x$height RGB, got ${pixels.size}"
        }
    }

    /** Channel [c] (0 = R, 1 = G, 2 = B) of pixel ([x], [y]) as 0..255. */
    operator fun get(
        x: Int,
        y: Int,
        c: Int,
    ): Int = pixels[(y * width + x) * 3 + c].toInt() and 0xFF

    /**
     * This image turned clockwise by [degrees] (0, 90, 180 or 270): CameraX's `ImageInfo.rotationDegrees`, which is
     * the clockwise rotation that makes a camera frame upright. The result is written into [reuse] when it has the
     * rotated size (and is not this image), so a camera loop turns every frame upright without allocating a new
     * ~0.9 MB image (640x480) per frame.
     */
    fun rotated(
        degrees: Int,
        reuse: RgbImage? = null,
    ): RgbImage {
        val d = ((degrees % 360) + 360) % 360
        require(d % 90 == 0) { "rotation must be a multiple of 90 degrees, got $degrees" }
        if (d == 0) return this
        val outW = if (d == 180) width else height
        val outH = if (d == 180) height else width
        val target =
            if (reuse != null && reuse !== this && reuse.width == outW && reuse.height == outH) {
                reuse
            } else {
                RgbImage(outW, outH)
            }
        val out = target.pixels
        var o = 0
        for (y in 0 until outH) {
            for (x in 0 until outW) {
                // Source pixel for destination (x, y).
                val sx: Int
                val sy: Int
                when (d) {
                    90 -> {
                        sx = y
                        sy = height - 1 - x
                    }

                    180 -> {
                        sx = width - 1 - x
                        sy = height - 1 - y
                    }

                    else -> {
                        sx = width - 1 - y
                        sy = x
                    }
                }
                val s = (sy * width + sx) * 3
                out[o] = pixels[s]
                out[o + 1] = pixels[s + 1]
                out[o + 2] = pixels[s + 2]
                o += 3
            }
        }
        return target
    }
}
