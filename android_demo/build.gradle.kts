// Top-level build file: plugin versions come from gradle/libs.versions.toml; each module applies what it needs.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.jvm) apply false
}
