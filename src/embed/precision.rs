//! Weight precision and CPU kernel choice for the CPU encoder, and what the CPU offers.

use super::EmbedError;

/// How the encoder's projection weights are stored and multiplied on the CPU.
///
/// Activations are `f32` in every precision; only the weights of the six layers' dense
/// projections change (embeddings, LayerNorm and biases stay `f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The checkpoint's own `f32` weights (used in place on the portable kernels, packed into
    /// panels on the SIMD tiers): the exact path.
    F32,
    /// Weights rounded once to IEEE half precision and widened to `f32` inside the kernels
    /// (the default: half the bytes per pass, cosine ≥ 0.9999 to the `f32` path).
    #[default]
    F16,
    /// Per-output-channel symmetric `i8` weights and dynamically quantized `i8` activations
    /// (one scale per 32 inputs of each token row), dotted in `i32` (opt-in: a quarter of the
    /// bytes, cosine ≥ 0.99 to the `f32` path).
    Int8,
}

impl Precision {
    /// The name used on the command line, in `memex model info` and in the knowledge base.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "f16" | "fp16" => Ok(Precision::F16),
            "int8" | "i8" => Ok(Precision::Int8),
            other => Err(EmbedError::Option(format!(
                "precision {other:?} is unknown: use f32, f16 or int8"
            ))),
        }
    }
}

/// Which kernels the CPU encoder may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// The fastest kernels the CPU has: the AVX-512 tier (512-bit panels for `f32`/`f16`
    /// projections, VNNI for int8) on top of AVX2 + FMA + F16C, else AVX2 + FMA + F16C, else
    /// the portable ones.
    #[default]
    Auto,
    /// AVX2 + FMA + F16C even on a CPU with AVX-512 (portable when the CPU lacks them).
    Avx2,
    /// The portable scalar kernels even on a CPU with AVX2 (to check them, or to compare).
    Scalar,
}

impl std::str::FromStr for KernelChoice {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "simd" => Ok(KernelChoice::Auto),
            "avx2" => Ok(KernelChoice::Avx2),
            "scalar" => Ok(KernelChoice::Scalar),
            other => Err(EmbedError::Option(format!(
                "kernel {other:?} is unknown: use auto, avx2 or scalar"
            ))),
        }
    }
}

/// The kernels the CPU encoder actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F for the `f32`/`f16` projections (`panels.rs`) and AVX-512 VNNI for the int8
    /// ones (`vnni.rs`); AVX2, FMA and F16C for everything else (x86-64), detected at run time.
    Avx512Vnni,
    /// AVX2, FMA and F16C (x86-64), detected at run time.
    Avx2F16c,
    /// Portable Rust loops (any CPU, or forced with [`KernelChoice::Scalar`]).
    Scalar,
}

impl Kernel {
    /// The kernel `choice` resolves to on this CPU.
    pub fn resolve(choice: KernelChoice) -> Kernel {
        let simd = cpu_has_avx2_fma_f16c();
        match choice {
            KernelChoice::Auto if simd && cpu_has_avx512_vnni() => Kernel::Avx512Vnni,
            KernelChoice::Auto | KernelChoice::Avx2 if simd => Kernel::Avx2F16c,
            _ => Kernel::Scalar,
        }
    }

    /// `avx512vnni+avx2+fma+f16c`, `avx2+fma+f16c` or `scalar`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Avx512Vnni => "avx512vnni+avx2+fma+f16c",
            Kernel::Avx2F16c => "avx2+fma+f16c",
            Kernel::Scalar => "scalar",
        }
    }

    /// What multiplies the projection weights of `precision` under this kernel, in a few words
    /// (`memex model info`).
    pub fn projections(self, precision: Precision) -> &'static str {
        match (self, precision) {
            (Kernel::Avx512Vnni, Precision::Int8) => "avx512-vnni packed int8",
            (Kernel::Avx512Vnni, _) => "avx512f panels",
            (Kernel::Avx2F16c, Precision::Int8) => "avx2 packed int8 (maddubs)",
            (Kernel::Avx2F16c, _) => "avx2 panels",
            (Kernel::Scalar, _) => "portable",
        }
    }

    /// Whether the AVX2 + FMA + F16C kernels are in use (also under AVX-512 VNNI).
    pub(crate) fn simd(self) -> bool {
        matches!(self, Kernel::Avx512Vnni | Kernel::Avx2F16c)
    }

    /// Whether the AVX-512 tier is in use: `f32`/`f16` projections on the 512-bit panels and
    /// int8 ones on AVX-512 VNNI.
    pub(crate) fn vnni(self) -> bool {
        self == Kernel::Avx512Vnni
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether this CPU has AVX-512F, AVX-512VL and AVX-512 VNNI (`vpdpbusd` on 512-bit registers),
/// the AVX-512 tier's requirements.
pub fn cpu_has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX2, FMA and F16C.
pub fn cpu_has_avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
