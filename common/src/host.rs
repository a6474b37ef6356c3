//! Host statistics an agent reports about its box.
//!
//! These types cross the wire in postcard (positional, so fields are never reordered or removed;
//! a new field means a new message variant, see `proto`) and are served by the controller's API
//! as JSON with the same field names.

use serde::{Deserialize, Serialize};

/// A complete picture of a box's host resources at one instant. Each snapshot replaces the
/// previous one: nothing in it is a delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    /// Host name as the box knows itself.
    pub hostname: String,
    /// Operating system name and version, e.g. "Ubuntu 24.04".
    pub os: String,
    /// Kernel release, e.g. "6.11.0-1016-nvidia".
    pub kernel: String,
    /// CPU architecture, e.g. "aarch64" or "x86_64".
    pub arch: String,
    /// Seconds since the box booted.
    pub uptime_secs: u64,
    /// Logical CPU cores.
    pub cpu_cores: u32,
    /// Whole-machine CPU use, 0..=100.
    pub cpu_usage_pct: f32,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: LoadAverage,
    /// Physical memory, bytes.
    pub mem_total_bytes: u64,
    /// Memory available to new work without swapping (MemAvailable), bytes.
    pub mem_available_bytes: u64,
    /// Mounted local file systems.
    pub disks: Vec<DiskUsage>,
}

/// Load averages as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LoadAverage {
    pub one: f32,
    pub five: f32,
    pub fifteen: f32,
}

/// One mounted file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub mount_point: String,
    pub file_system: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}
