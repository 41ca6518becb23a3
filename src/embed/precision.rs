//! Weight precision and CPU kernel choice for the CPU encoder, and what the CPU offers.

use super::EmbedError;

/// How the encoder's projection weights are stored and multiplied on the CPU.
///
/// Activations are `f32` in every precision; only the weights of the six layers' dense
/// projections change (embeddings, LayerNorm and biases stay `f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The checkpoint's own `f32` weights, used in place: the exact path.
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
    /// AVX2 + FMA + F16C kernels when the CPU has all three, else the portable ones.
    #[default]
    Auto,
    /// The portable scalar kernels even on a CPU with AVX2 (to check them, or to compare).
    Scalar,
}

impl std::str::FromStr for KernelChoice {
    type Err = EmbedError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "simd" | "avx2" => Ok(KernelChoice::Auto),
            "scalar" => Ok(KernelChoice::Scalar),
            other => Err(EmbedError::Option(format!(
                "kernel {other:?} is unknown: use auto or scalar"
            ))),
        }
    }
}

/// The kernels the CPU encoder actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX2, FMA and F16C (x86-64), detected at run time.
    Avx2F16c,
    /// Portable Rust loops (any CPU, or forced with [`KernelChoice::Scalar`]).
    Scalar,
}

impl Kernel {
    /// The kernel `choice` resolves to on this CPU.
    pub fn resolve(choice: KernelChoice) -> Kernel {
        match choice {
            KernelChoice::Scalar => Kernel::Scalar,
            KernelChoice::Auto if cpu_has_avx2_fma_f16c() => Kernel::Avx2F16c,
            KernelChoice::Auto => Kernel::Scalar,
        }
    }

    /// `avx2+fma+f16c` or `scalar`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Avx2F16c => "avx2+fma+f16c",
            Kernel::Scalar => "scalar",
        }
    }

    /// Whether the SIMD kernels are in use.
    pub(crate) fn simd(self) -> bool {
        self == Kernel::Avx2F16c
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
