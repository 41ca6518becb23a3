//! `F32Buf`: `f32` values owned or mapped in place from the checkpoint, shared by the CPU
//! encoder (`cpu.rs`) and the projections (`dense.rs`).

use std::ops::Deref;
use std::sync::Arc;

use memmap2::Mmap;

/// `f32` values either owned or borrowed in place from the mapped checkpoint.
pub(super) enum F32Buf {
    Owned(Vec<f32>),
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl Deref for F32Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32Buf::Owned(v) => v,
            // SAFETY: `Mapped` is only built by `read` after checking that offset + 4·len lies
            // inside the map, that the address is 4-byte aligned and that the host is little
            // endian (the file's byte order); the map is read-only and lives as long as `self`.
            F32Buf::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f32, *len)
            },
        }
    }
}
