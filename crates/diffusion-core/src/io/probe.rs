//! Memory and time probes for benchmarks.
//!
//! - CPU backends allocate on the heap: register [`PeakAlloc`] as the binary's global allocator
//!   and [`HeapProbe`] reports the peak heap above the level at `start()`.
//! - CubeCL backends (wgpu, cuda) keep a memory pool that grows to the high-water mark;
//!   [`device_reserved_bytes`] reads it after `memory_cleanup`, i.e. the peak device memory.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use burn::tensor::backend::Backend;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// A global allocator that counts live heap bytes and their peak.
///
/// ```text
/// #[global_allocator]
/// static ALLOC: diffusion_core::io::probe::PeakAlloc = diffusion_core::io::probe::PeakAlloc;
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakAlloc;

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwards to the system allocator with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ACTIVE.store(true, Ordering::Relaxed);
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// Live heap bytes counted by [`PeakAlloc`], or `None` if it is not the global allocator.
pub fn heap_in_use() -> Option<usize> {
    ACTIVE
        .load(Ordering::Relaxed)
        .then(|| CURRENT.load(Ordering::Relaxed))
}

/// Measures the peak heap of a region of code (process-wide: run one region at a time).
#[derive(Debug)]
pub struct HeapProbe {
    base: usize,
}

impl HeapProbe {
    /// Starts a region: resets the peak to the current level.
    pub fn start() -> Self {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        Self { base }
    }

    /// Peak heap bytes above the level at `start()`, or `None` without [`PeakAlloc`].
    pub fn peak(&self) -> Option<usize> {
        heap_in_use().map(|_| PEAK.load(Ordering::Relaxed).saturating_sub(self.base))
    }

    /// Heap bytes still held above the level at `start()`.
    pub fn retained(&self) -> Option<usize> {
        heap_in_use().map(|now| now.saturating_sub(self.base))
    }
}

/// Bytes reserved by the device's memory pool (the high-water mark since the last cleanup) on
/// CubeCL backends; `None` for host backends.
pub fn device_reserved_bytes<B: Backend>(device: &B::Device) -> Option<u64> {
    device_usage::<B>(device).map(|m| m.bytes_reserved)
}

/// Bytes in use and reserved by a CubeCL device's memory pool.
struct DeviceUsage {
    bytes_in_use: u64,
    bytes_reserved: u64,
}

fn device_usage<B: Backend>(device: &B::Device) -> Option<DeviceUsage> {
    let any = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(d) = any.downcast_ref::<cubecl::wgpu::WgpuDevice>() {
        use cubecl::Runtime;
        return cubecl::wgpu::WgpuRuntime::client(d)
            .memory_usage()
            .ok()
            .map(|m| DeviceUsage {
                bytes_in_use: m.bytes_in_use,
                bytes_reserved: m.bytes_reserved,
            });
    }
    #[cfg(feature = "cuda")]
    if let Some(d) = any.downcast_ref::<cubecl::cuda::CudaDevice>() {
        use cubecl::Runtime;
        return cubecl::cuda::CudaRuntime::client(d)
            .memory_usage()
            .ok()
            .map(|m| DeviceUsage {
                bytes_in_use: m.bytes_in_use,
                bytes_reserved: m.bytes_reserved,
            });
    }
    let _ = any;
    None
}

/// Bytes currently in use: live device allocations on CubeCL backends, live heap (with
/// [`PeakAlloc`]) on CPU backends.
pub fn memory_in_use<B: Backend>(device: &B::Device) -> Option<u64> {
    let _ = B::sync(device);
    device_usage::<B>(device)
        .map(|m| m.bytes_in_use)
        .or_else(|| heap_in_use().map(|h| h as u64))
}

/// Peak memory and wall time of one measured region, on any backend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Wall time, with the device synchronised before and after.
    pub time: Duration,
    /// Peak bytes: device pool high-water mark on GPU backends, peak heap on CPU backends.
    pub peak_bytes: Option<u64>,
}

/// Runs `f` once and measures its peak memory and time; the device is synchronised and its
/// memory pool cleaned first so the high-water mark belongs to `f`.
pub fn measure<B: Backend, T>(device: &B::Device, f: impl FnOnce() -> T) -> (T, Measurement) {
    let _ = B::sync(device);
    B::memory_cleanup(device);
    let on_device = device_reserved_bytes::<B>(device).is_some();
    let base = device_reserved_bytes::<B>(device).unwrap_or(0);
    let heap = HeapProbe::start();
    let start = Instant::now();
    let out = f();
    let _ = B::sync(device);
    let time = start.elapsed();
    let peak_bytes = if on_device {
        device_reserved_bytes::<B>(device).map(|r| r.saturating_sub(base))
    } else {
        heap.peak().map(|p| p as u64)
    };
    (out, Measurement { time, peak_bytes })
}
