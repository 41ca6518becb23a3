//! A row-major output buffer that parallel jobs fill in disjoint parts (each job owns a set of
//! output channels, or of rows × channels), without a serial gather at the end.

/// The start of the output, shared by the jobs that write it.
pub(super) struct OutPtr(pub(super) *mut f32);
// SAFETY: only used to let jobs write disjoint elements of one buffer that outlives them.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element at `i`; the caller keeps `i` in bounds and unshared.
    pub(super) fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}
