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
    private var classifier: LiteRtClassifier? = null

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
            classifier?.close()
            classifier = null
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

    /** (Re)creates the classifier with the current backend and thread count, off the UI thread. */
    private fun reloadModel() {
        binding.results.setText(R.string.loading_model)
        val wantBackend = backend
        val wantThreads = threads
        analysisExecutor.execute {
            classifier?.close()
            classifier = null
            if (!ModelAssets.exists(assets)) {
                runOnUiThread { binding.results.setText(R.string.no_model) }
                return@execute
            }
            try {
                val c = LiteRtClassifier.create(assets, wantBackend, wantThreads)
                classifier = c
                runOnUiThread {
                    binding.results.setText(R.string.waiting_for_frames)
                    c.fallbackReason?.let { reason ->
                        binding.stats.text = getString(R.string.gpu_fallback, reason)
                        // Show CPU as selected without triggering another reload (the listener sees no change).
                        backend = Backend.CPU
                        binding.accelerator.check(R.id.use_cpu)
                    }
                }
            } catch (e: Exception) {
                Log.e(TAG, "model load failed", e)
                runOnUiThread {
                    binding.results.text =
                        getString(R.string.model_error, e.message ?: e.javaClass.simpleName)
                }
            }
        }
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
        analysis.setAnalyzer(analysisExecutor, FrameAnalyzer(::onFrame))
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
        val c = classifier ?: return
        val result =
            try {
                c.classify(frame, TOP_K, startNs)
            } catch (e: Exception) {
                Log.e(TAG, "inference failed", e)
                return
            }
        val spec = c.core.spec
        val lines =
            result.top.joinToString("\n") { (label, score) ->
                getString(
                    R.string.result_line,
                    label,
                    score * 100f,
                )
            }
        val stats =
            getString(
                R.string.stats,
                spec.input.width,
                spec.input.height,
                spec.input.dtype.name
                    .lowercase(),
                c.backend.name,
                c.threads,
                result.inferenceMs,
                result.frameMs,
            ) + (c.fallbackReason?.let { "\n" + getString(R.string.gpu_fallback, it) } ?: "")
        runOnUiThread {
            binding.results.text = lines
            binding.stats.text = stats
        }
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
        const val TAG = "MobileNetDemo"
        const val TOP_K = 3
        const val DEFAULT_THREADS = 2
        val THREAD_CHOICES = listOf(1, 2, 4)
        const val KEY_BACKEND = "backend"
        const val KEY_THREADS = "threads"
    }
}
