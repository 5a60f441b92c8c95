package com.mobilenetpipeline.demo

import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import com.mobilenetpipeline.core.Failures
import com.mobilenetpipeline.core.RgbImage
import com.mobilenetpipeline.core.UprightFrames
import com.mobilenetpipeline.core.YuvPlane

/**
 * CameraX analyzer (runs on the analysis executor): YUV_420_888 -> RGB -> upright -> [classify], in buffers reused
 * from frame to frame. With STRATEGY_KEEP_ONLY_LATEST, frames that arrive while one is being classified are dropped,
 * so the results always describe a recent frame.
 */
class FrameAnalyzer(
    /** Whether a model runs: without one the conversion would be wasted, so the frame is closed untouched. */
    private val wantsFrames: () -> Boolean,
    /** Gets the upright frame and when its analysis started (System.nanoTime). */
    private val classify: (RgbImage, Long) -> Unit,
    /** A conversion failure; an exception escaping analyze() would kill the analysis thread and the app. */
    private val onFailure: (Throwable) -> Unit,
) : ImageAnalysis.Analyzer {
    private val frames = UprightFrames()

    override fun analyze(image: ImageProxy) {
        try {
            if (!wantsFrames()) return
            val start = System.nanoTime()
            val planes = image.planes
            val frame =
                try {
                    frames.next(
                        image.width,
                        image.height,
                        YuvPlane(planes[0].buffer, planes[0].rowStride, planes[0].pixelStride),
                        YuvPlane(planes[1].buffer, planes[1].rowStride, planes[1].pixelStride),
                        YuvPlane(planes[2].buffer, planes[2].rowStride, planes[2].pixelStride),
                        image.imageInfo.rotationDegrees,
                    )
                } catch (t: Throwable) {
                    if (!Failures.isRecoverable(t)) throw t
                    onFailure(t)
                    return
                }
            classify(frame, start)
        } finally {
            image.close()
        }
    }
}
