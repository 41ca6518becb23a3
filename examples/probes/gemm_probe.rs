//! Calibrates the machine: f32 GFLOP/s of gemm at the encoder's shapes and layouts (development aid).
use std::time::Instant;

fn run(
    m: usize,
    n: usize,
    k: usize,
    transposed_rhs: bool,
    read_dst: bool,
    par: gemm::Parallelism,
) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    let (rcs, rrs) = if transposed_rhs {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    let reps = 10;
    let t0 = Instant::now();
    for _ in 0..reps {
        // SAFETY: buffers sized for the shapes above.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                read_dst,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                rcs,
                rrs,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    2.0 * (m * n * k * reps) as f64 / t0.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let m: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1600);
    for (n, k) in [(1152, 384), (384, 1536), (1536, 384)] {
        for par in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
            let label = if matches!(par, gemm::Parallelism::None) {
                "1t"
            } else {
                "2t"
            };
            println!(
                "m={m} n={n} k={k} {label}: row-major {:.1}  transposed {:.1}  read_dst {:.1} GFLOP/s",
                run(m, n, k, false, false, par),
                run(m, n, k, true, false, par),
                run(m, n, k, true, true, par)
            );
        }
    }
}
