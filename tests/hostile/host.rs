//! What the hostile suite needs from the host: the run-or-skip decision (root and /dev/kvm;
//! under `PALISADE_NO_SKIP` a missing one is a failure, never a skip) and an API latency
//! watcher polling `GET /` every 20 ms (the VMM's resident memory is `common::rss_kib`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::api::ApiClient;
use crate::common::kvm_available;

/// True when this host can run the attacks. Otherwise skips through `common::skip` (a
/// failure under `PALISADE_NO_SKIP`, which .ci/run and resources/hostile.sh set).
pub fn can_attack(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        crate::common::skip::skip(test, "needs root");
        return false;
    }
    kvm_available(test)
}

/// What a latency watcher saw.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub polls: u64,
    pub max: Duration,
    pub failures: u64,
}

impl Latency {
    pub fn max_ms(&self) -> f64 {
        self.max.as_secs_f64() * 1000.0
    }
}

/// Polls `GET /` on an API socket every 20 ms on its own thread until stopped.
pub struct ApiWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Latency>,
}

impl ApiWatch {
    pub fn start(sock: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut client = ApiClient::connect(sock);
            let mut seen = Latency {
                polls: 0,
                max: Duration::ZERO,
                failures: 0,
            };
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                let status = client.get("/").status;
                let took = start.elapsed();
                seen.polls += 1;
                seen.max = seen.max.max(took);
                if status != 200 {
                    seen.failures += 1;
                }
                std::thread::sleep(Duration::from_millis(20).saturating_sub(took));
            }
            seen
        });
        Self { stop, handle }
    }

    pub fn stop(self) -> Latency {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("latency watcher panicked")
    }
}
