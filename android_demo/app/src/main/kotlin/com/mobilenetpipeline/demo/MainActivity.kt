package com.mobilenetpipeline.demo

import android.Manifest
import android.content.Intent
import android.content.pm.PackageManager
import android.hardware.display.DisplayManager
import android.net.Uri
import android.os.Bundle
import android.provider.Settings
import android.util.Log
import android.view.View
import android.widget.AdapterView
import android.widget.ArrayAdapter
import androidx.activity.enableEdgeToEdge
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.Preview
import androidx.camera.core.resolutionselector.AspectRatioStrategy
import androidx.camera.core.resolutionselector.ResolutionSelector
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.core.content.ContextCompat
import androidx.core.view.ViewCompat
import androidx.core.view.WindowInsetsCompat
import androidx.core.view.updatePadding
import com.mobilenetpipeline.core.Backend
import com.mobilenetpipeline.core.ClassifierCore
import com.mobilenetpipeline.core.ClassifierSession
import com.mobilenetpipeline.core.Failures
import com.mobilenetpipeline.core.LinkageFailures
import com.mobilenetpipeline.core.Notice
import com.mobilenetpipeline.core.RgbImage
import com.mobilenetpipeline.demo.databinding.ActivityMainBinding
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Live camera classification: CameraX Preview + ImageAnalysis (keep only the latest frame) feeding a LiteRT
 * CompiledModel through the pure-Kotlin `core` preprocessing (the same bytes the Python evaluation builds).
 */
class MainActivity : AppCompatActivity() {
    private lateinit var binding: ActivityMainBinding

    /** Everything touching the model runs on this one thread: loading, switching backend, inference. */
    private lateinit var analysisExecutor: ExecutorService

    /** Analysis thread only. */
    private var session: ClassifierSession? = null

    /** The model, read once (analysis thread only): switching accelerator or threads does not change it. */
    private var model: BundledModel? = null

    @Volatile private var backend = Backend.CPU

    @Volatile private var threads = DEFAULT_THREADS

    private var cameraProvider: ProcessCameraProvider? = null
    private var useCases: Pair<Preview, ImageAnalysis>? = null

    private val requestCamera =
        registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
            if (granted) startCamera() else showPermissionPanel()
        }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        enableEdgeToEdge()
        binding = ActivityMainBinding.inflate(layoutInflater)
        setContentView(binding.root)
        analysisExecutor = Executors.newSingleThreadExecutor()
        savedInstanceState?.let {
            backend = Backend.valueOf(it.getString(KEY_BACKEND, Backend.CPU.name))
            threads = it.getInt(KEY_THREADS, DEFAULT_THREADS)
        }

        // Targeting API 35+ draws edge to edge: keep the controls clear of the system bars.
        val panel = binding.bottomPanel
        val (padLeft, padRight, padBottom) = Triple(panel.paddingLeft, panel.paddingRight, panel.paddingBottom)
        ViewCompat.setOnApplyWindowInsetsListener(panel) { v, insets ->
            val bars = insets.getInsets(WindowInsetsCompat.Type.systemBars() or WindowInsetsCompat.Type.displayCutout())
            v.updatePadding(left = bars.left + padLeft, right = bars.right + padRight, bottom = bars.bottom + padBottom)
            insets
        }
        getSystemService(DisplayManager::class.java).registerDisplayListener(displayListener, null)
        setUpControls()
        binding.reload.setOnClickListener { reloadModel() }
        reloadModel()

        if (hasCameraPermission()) startCamera() else requestCamera.launch(Manifest.permission.CAMERA)
    }

    override fun onSaveInstanceState(outState: Bundle) {
        super.onSaveInstanceState(outState)
        outState.putString(KEY_BACKEND, backend.name)
        outState.putInt(KEY_THREADS, threads)
    }

    override fun onResume() {
        super.onResume()
        // The user may have granted the permission in Settings meanwhile.
        if (binding.permissionPanel.visibility == View.VISIBLE && hasCameraPermission()) startCamera()
    }

    override fun onDestroy() {
        super.onDestroy()
        getSystemService(DisplayManager::class.java).unregisterDisplayListener(displayListener)
        cameraProvider?.unbindAll()
        analysisExecutor.execute {
            session?.close()
            session = null
        }
        analysisExecutor.shutdown()
    }

    private fun hasCameraPermission() =
        ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED

    private fun showPermissionPanel() {
        binding.permissionPanel.visibility = View.VISIBLE
        val askAgain = shouldShowRequestPermissionRationale(Manifest.permission.CAMERA)
        binding.permissionText.setText(if (askAgain) R.string.permission_needed else R.string.permission_denied_forever)
        binding.permissionButton.setText(if (askAgain) R.string.grant_permission else R.string.open_settings)
        binding.permissionButton.setOnClickListener {
            if (askAgain) {
                requestCamera.launch(Manifest.permission.CAMERA)
            } else {
                startActivity(
                    Intent(Settings.ACTION_APPLICATION_DETAILS_SETTINGS, Uri.fromParts("package", packageName, null)),
                )
            }
        }
    }

    private fun setUpControls() {
        val choices = THREAD_CHOICES.map { it.toString() }
        binding.threads.adapter = ArrayAdapter(this, android.R.layout.simple_spinner_dropdown_item, choices)
        binding.threads.setSelection(THREAD_CHOICES.indexOf(threads).coerceAtLeast(0))
        binding.threads.onItemSelectedListener =
            object : AdapterView.OnItemSelectedListener {
                override fun onItemSelected(
                    parent: AdapterView<*>?,
                    view: View?,
                    position: Int,
                    id: Long,
                ) {
                    val chosen = THREAD_CHOICES[position]
                    if (chosen != threads) {
                        threads = chosen
                        reloadModel()
                    }
                }

                override fun onNothingSelected(parent: AdapterView<*>?) = Unit
            }
        binding.accelerator.check(if (backend == Backend.GPU) R.id.use_gpu else R.id.use_cpu)
        binding.accelerator.setOnCheckedChangeListener { _, checkedId ->
            val chosen = if (checkedId == R.id.use_gpu) Backend.GPU else Backend.CPU
            if (chosen != backend) {
                backend = chosen
                reloadModel()
            }
        }
    }

    /** (Re)creates the session with the current backend and thread count, off the UI thread. */
    private fun reloadModel() {
        binding.results.setText(R.string.loading_model)
        binding.stats.text = ""
        binding.reload.visibility = View.GONE
        val wantBackend = backend
        val wantThreads = threads
        analysisExecutor.execute {
            session?.close()
            session = null
            val notice =
                try {
                    if (!ModelAssets.exists(assets)) {
                        Notice.NoModel
                    } else {
                        val m = model ?: ModelAssets.load(assets).also { model = it }
                        val factory = LiteRtEngineFactory(applicationContext, m.cacheKey)
                        val s = ClassifierSession(ClassifierCore(m.spec), factory, linkageFailures)
                        session = s
                        s.start(wantBackend, wantThreads)
                    }
                } catch (t: Throwable) {
                    // Errors too: a missing litert_jni is an UnsatisfiedLinkError, not an Exception.
                    if (!Failures.isRecoverable(t)) throw t
                    Log.e(TAG, "model load failed", t)
                    Notice.LoadFailed(Failures.reason(linkageFailures.explain(t)))
                }
            notice?.let { Log.w(TAG, "model: $it") }
            val running = session?.running == true
            runOnUiThread {
                if (running) binding.results.setText(R.string.waiting_for_frames)
                showNotice(notice)
            }
        }
    }

    /**
     * On the UI thread. Failures that leave nothing running replace the results, with a Reload button when loading
     * again can help; a GPU fallback goes under the stats ([replaceStats] false when the caller has just written
     * stats that already end with it).
     */
    private fun showNotice(
        notice: Notice?,
        replaceStats: Boolean = true,
    ) {
        binding.reload.visibility = if (notice?.offersReload == true) View.VISIBLE else View.GONE
        when (notice) {
            null -> {
                return
            }

            Notice.NoModel -> {
                binding.results.setText(R.string.no_model)
            }

            is Notice.LoadFailed -> {
                binding.results.text = getString(R.string.model_error, notice.reason)
            }

            is Notice.Stopped -> {
                binding.results.text = getString(R.string.inference_stopped, notice.reason)
            }

            is Notice.GpuUnavailable, is Notice.GpuFailedWhileRunning -> {
                if (replaceStats) binding.stats.text = noticeLine(notice).orEmpty()
                // The model runs on the CPU now: show CPU as selected without another reload (the listener sees no
                // change). Choosing GPU again retries it.
                backend = Backend.CPU
                binding.accelerator.check(R.id.use_cpu)
            }
        }
    }

    private fun noticeLine(notice: Notice?): String? =
        when (notice) {
            is Notice.GpuUnavailable -> getString(R.string.gpu_unavailable, notice.reason)
            is Notice.GpuFailedWhileRunning -> getString(R.string.gpu_failed, notice.reason)
            else -> null
        }

    private fun startCamera() {
        binding.permissionPanel.visibility = View.GONE
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            try {
                val provider = future.get()
                cameraProvider = provider
                bindUseCases(provider)
            } catch (e: Exception) {
                Log.e(TAG, "camera start failed", e)
                binding.results.text = getString(R.string.camera_error, e.message ?: e.javaClass.simpleName)
            }
        }, ContextCompat.getMainExecutor(this))
    }

    private fun bindUseCases(provider: ProcessCameraProvider) {
        val rotation = displayRotation()
        val resolution =
            ResolutionSelector
                .Builder()
                .setAspectRatioStrategy(AspectRatioStrategy.RATIO_4_3_FALLBACK_AUTO_STRATEGY)
                .build()
        val preview =
            Preview
                .Builder()
                .setResolutionSelector(resolution)
                .setTargetRotation(rotation)
                .build()
                .also { it.setSurfaceProvider(binding.preview.surfaceProvider) }
        val analysis =
            ImageAnalysis
                .Builder()
                .setResolutionSelector(resolution)
                .setTargetRotation(rotation)
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_YUV_420_888)
                .build()
        analysis.setAnalyzer(
            analysisExecutor,
            FrameAnalyzer(
                wantsFrames = { session?.running == true },
                classify = ::onFrame,
                onFailure = ::onFrameFailure,
            ),
        )
        provider.unbindAll()
        provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
        useCases = Pair(preview, analysis)
    }

    @Suppress("DEPRECATION") // Activity.display needs API 30; minSdk is 24.
    private fun displayRotation(): Int = binding.preview.display?.rotation ?: windowManager.defaultDisplay.rotation

    /** On the analysis thread. */
    private fun onFrame(
        frame: RgbImage,
        startNs: Long,
    ) {
        val s = session ?: return
        val before = s.notice
        val result = s.classify(frame, TOP_K, startNs)
        val notice = s.notice
        // A notice changes once (a GPU that fails while running, or a stop), never on every frame.
        val changed = notice != before
        if (changed) Log.w(TAG, "inference: $notice")
        if (result == null) {
            if (changed) runOnUiThread { showNotice(notice) }
            return
        }
        val input = s.core.spec.input
        val lines =
            result.top.joinToString("\n") { (label, score) -> getString(R.string.result_line, label, score * 100f) }
        val stats =
            getString(
                R.string.stats,
                input.width,
                input.height,
                input.dtype.name.lowercase(),
                result.acceleration.label,
                result.threads,
                result.inferenceMs,
                result.frameMs,
            ) + (noticeLine(notice)?.let { "\n" + it } ?: "")
        runOnUiThread {
            binding.results.text = lines
            binding.stats.text = stats
            if (changed) showNotice(notice, replaceStats = false)
        }
    }

    /** On the analysis thread: the camera frame could not be converted. */
    private fun onFrameFailure(failure: Throwable) {
        val s = session ?: return
        Log.e(TAG, "frame conversion failed", failure)
        s.stop(failure)
        val notice = s.notice
        runOnUiThread { showNotice(notice) }
    }

    /**
     * The activity handles rotation itself (no restart, so the model stays loaded); a display listener also catches
     * 180-degree turns, which bring no configuration change. CameraX then reports the new `rotationDegrees` with each
     * frame and [FrameAnalyzer] turns the frame upright.
     */
    private val displayListener =
        object : DisplayManager.DisplayListener {
            override fun onDisplayAdded(displayId: Int) = Unit

            override fun onDisplayRemoved(displayId: Int) = Unit

            override fun onDisplayChanged(displayId: Int) {
                val rotation = displayRotation()
                useCases?.let { (preview, analysis) ->
                    preview.targetRotation = rotation
                    analysis.targetRotation = rotation
                }
            }
        }

    private companion object {
        /**
         * One for the process: a native-library failure outlives the activity and its sessions, and later loads
         * only see NoClassDefFoundError.
         */
        val linkageFailures = LinkageFailures()
        const val TAG = "MobileNetDemo"
        const val TOP_K = 3
        const val DEFAULT_THREADS = 2
        val THREAD_CHOICES = listOf(1, 2, 4)
        const val KEY_BACKEND = "backend"
        const val KEY_THREADS = "threads"
    }
}
