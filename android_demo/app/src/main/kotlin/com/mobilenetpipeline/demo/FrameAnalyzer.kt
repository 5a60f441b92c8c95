package com.mobilenetpipeline.demo

import android.os.SystemClock
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import com.mobilenetpipeline.core.RgbImage
import com.mobilenetpipeline.core.YuvConverter
import com.mobilenetpipeline.core.YuvPlane

/**
 * CameraX analyzer (runs on the analysis executor): YUV_420_888 -> RGB -> upright -> [classify]. With
 * STRATEGY_KEEP_ONLY_LATEST, frames that arrive while one is being classified are dropped, so the results always
 * describe a recent frame.
 */
class FrameAnalyzer(
    private val classify: (RgbImage, Long) -> Unit,
) : ImageAnalysis.Analyzer {
    private var rgb: RgbImage? = null

    override fun analyze(image: ImageProxy) {
        val start = SystemClock.elapsedRealtimeNanos()
        try {
            val planes = image.planes
            val frame =
                YuvConverter.toRgb(
                    image.width,
                    image.height,
                    YuvPlane(planes[0].buffer, planes[0].rowStride, planes[0].pixelStride),
                    YuvPlane(planes[1].buffer, planes[1].rowStride, planes[1].pixelStride),
                    YuvPlane(planes[2].buffer, planes[2].rowStride, planes[2].pixelStride),
                    reuse = rgb,
                )
            rgb = frame
            classify(frame.rotated(image.imageInfo.rotationDegrees), start)
        } finally {
            image.close()
        }
    }
}
