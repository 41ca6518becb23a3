//! Calibrates the machine: f32 GFLOP/s of gemm at the encoder's shapes (development aid).
use std::time::Instant;
fn main() {
    let (m, k, n) = (1700usize, 384usize, 1152usize);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0f32; m * n];
    for par in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
        let t0 = Instant::now();
        let reps = 20;
        for _ in 0..reps {
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    k as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "{:?}: {:.1} GFLOP/s",
            matches!(par, gemm::Parallelism::None),
            2.0 * (m * n * k * reps) as f64 / dt / 1e9
        );
    }
}
