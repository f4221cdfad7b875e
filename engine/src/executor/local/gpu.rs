//! The GPUs of the machine: found with `nvidia-smi -L`, handed out exclusively to running steps.
//!
//! One [`Pool`] is shared by every run of the executor. Runs waiting for GPUs watch a counter
//! that goes up whenever GPUs are given back ([`Pool::subscribe`]), so they wake without polling
//! and cannot miss a release that happens between their check and their wait.

use std::sync::Mutex;

use tokio::sync::watch;

/// The device indices that `nvidia-smi -L` lists; none when it is missing or fails.
pub(super) fn detect() -> Vec<u32> {
    let output = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match output {
        Ok(out) if out.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout)),
        Ok(_) | Err(_) => Vec::new(),
    }
}

/// The indices of lines like `GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-...)`; other lines (MIG
/// devices, warnings) are ignored.
pub(super) fn parse_nvidia_smi(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("GPU "))
        .filter_map(|rest| rest.split_once(':'))
        .filter_map(|(index, _)| index.trim().parse().ok())
        .collect()
}

/// Device indices, each held by at most one process at a time.
#[derive(Debug)]
pub(super) struct Pool {
    total: usize,
    free: Mutex<Vec<u32>>,
    released: watch::Sender<u64>,
}

impl Pool {
    /// A pool of these devices.
    pub(super) fn new(devices: Vec<u32>) -> Pool {
        Pool {
            total: devices.len(),
            free: Mutex::new(devices),
            released: watch::Sender::new(0),
        }
    }

    /// How many devices there are.
    pub(super) fn total(&self) -> usize {
        self.total
    }

    /// Takes `n` free devices (the lowest indices), or none when fewer are free.
    pub(super) fn take(&self, n: usize) -> Option<Vec<u32>> {
        let mut free = super::lock(&self.free);
        if free.len() < n {
            return None;
        }
        free.sort_unstable();
        Some(free.drain(..n).collect())
    }

    /// Gives devices back and wakes the runs waiting for some.
    pub(super) fn give_back(&self, devices: Vec<u32>) {
        if devices.is_empty() {
            return;
        }
        super::lock(&self.free).extend(devices);
        self.released.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` completes after GPUs are given back.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.released.subscribe()
    }
}
