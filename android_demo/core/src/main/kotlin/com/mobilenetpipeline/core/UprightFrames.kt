package com.mobilenetpipeline.core

/**
 * Camera frames (YUV_420_888 planes + CameraX's `rotationDegrees`) -> upright RGB images, keeping both the converted
 * image and its rotated copy across frames: at 640x480 each is 0.9 MB, which a per-frame allocation would hand to the
 * garbage collector 30 times a second. The returned image is overwritten by the next call. Not thread-safe: one per
 * analyzer.
 */
class UprightFrames {
    private var converted: RgbImage? = null
    private var upright: RgbImage? = null

    fun next(
        width: Int,
        height: Int,
        yPlane: YuvPlane,
        uPlane: YuvPlane,
        vPlane: YuvPlane,
        rotationDegrees: Int,
    ): RgbImage {
        val frame = YuvConverter.toRgb(width, height, yPlane, uPlane, vPlane, reuse = converted)
        converted = frame
        val turned = frame.rotated(rotationDegrees, reuse = upright)
        // rotated() hands back the frame itself for 0 degrees: never keep that as the rotation target.
        if (turned !== frame) upright = turned
        return turned
    }
}
