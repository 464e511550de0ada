//! `palisade-uffd-handler`: a page fault handler for the Uffd memory backend of
//! `PUT /snapshot/load` (Palisade's or Firecracker's: the protocol is the same). It listens on
//! a Unix socket, takes one VMM's handshake (the JSON array of GuestRegionUffdMapping with the
//! userfaultfd as SCM_RIGHTS), then serves every missing-page fault with UFFDIO_COPY of that
//! page from the memory file (UFFDIO_ZEROPAGE for ranges the VMM removed), until the VMM
//! closes its connection; then it prints how many faults it served and exits.
//!
//! The VMM's message is input like any other: the regions must lie inside the memory file and
//! fault addresses inside the regions, or the handler stops with an error. Removed ranges come
//! from what the guest gives its balloon, as often as it likes: they are kept merged
//! ([`Removed`]), so their number stays below half the guest's pages however many events
//! arrive, and each fault looks one up in O(log n).
//!
//! Modes for tests: `serve` (default); `stall` takes the userfaultfd and never serves a fault;
//! `close-early` accepts the connection and closes it without reading.
//!
//! Output, one line each, on stdout: `uffd-handler: listening on PATH`, `uffd-handler:
//! received N region(s), B bytes`, `uffd-handler: first fault at 0xADDR`, `uffd-handler:
//! served N faults (C copied, Z zeroed)`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use palisade::vstate::snapshot::uffd::{receive_handshake, GuestRegionUffdMapping};
use palisade::vstate::snapshot::uffd_abi::{
    UffdMsg, UffdioCopy, UffdioRange, UffdioZeropage, UFFDIO_COPY, UFFDIO_WAKE, UFFDIO_ZEROPAGE,
    UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE, UFFD_EVENT_UNMAP,
};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref};

/// Serves a snapshot's memory file to one VMM loading it with the Uffd backend.
#[derive(Parser)]
#[command(name = "palisade-uffd-handler", version)]
struct Cli {
    /// The Unix socket to listen on (the load's `backend_path`); a stale socket is replaced.
    #[arg(long)]
    socket: PathBuf,
    /// The snapshot's memory file.
    #[arg(long)]
    mem_file: PathBuf,
    /// What to do with the VMM's faults.
    #[arg(long, value_enum, default_value_t = Mode::Serve)]
    mode: Mode,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Serve every fault from the memory file.
    Serve,
    /// Take the userfaultfd and never serve a fault.
    Stall,
    /// Accept the connection and close it without reading.
    CloseEarly,
}

#[derive(Debug, thiserror::Error)]
enum HandlerError {
    #[error("Cannot {0}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("The VMM's regions do not fit the memory file ({file} bytes): {regions:?}")]
    Regions {
        file: u64,
        regions: Vec<GuestRegionUffdMapping>,
    },
    #[error("The VMM reported a fault at {0:#x}, outside its regions")]
    FaultOutside(u64),
    #[error("UFFDIO_{0} failed")]
    Ioctl(&'static str, #[source] std::io::Error),
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "uffd-handler: {line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("uffd-handler: {}", palisade::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), HandlerError> {
    let memory =
        File::open(&cli.mem_file).map_err(|e| HandlerError::Io("open the memory file", e))?;
    let _ = std::fs::remove_file(&cli.socket);
    let listener =
        UnixListener::bind(&cli.socket).map_err(|e| HandlerError::Io("bind the socket", e))?;
    say(&format!("listening on {}", cli.socket.display()));
    let (stream, _) = listener
        .accept()
        .map_err(|e| HandlerError::Io("accept", e))?;
    if cli.mode == Mode::CloseEarly {
        drop(stream);
        say("closed the connection without reading");
        return Ok(());
    }
    let (regions, uffd) =
        receive_handshake(&stream).map_err(|e| HandlerError::Io("read the handshake", e))?;
    let file_len = memory
        .metadata()
        .map_err(|e| HandlerError::Io("stat the memory file", e))?
        .len();
    let total: u64 = regions.iter().map(|r| r.size as u64).sum();
    let fits = regions.iter().all(|r| {
        r.page_size == 4096
            && r.offset
                .checked_add(r.size as u64)
                .is_some_and(|end| end <= file_len)
            && r.base_host_virt_addr.checked_add(r.size as u64).is_some()
    });
    if regions.is_empty() || !fits || total != file_len {
        return Err(HandlerError::Regions {
            file: file_len,
            regions,
        });
    }
    say(&format!(
        "received {} region(s), {total} bytes",
        regions.len()
    ));
    if cli.mode == Mode::Stall {
        say("stalling: no fault will be served");
        wait_for_hangup(&stream, None);
        return Ok(());
    }
    let source = map_file(&memory, file_len)?;
    let mut server = Server {
        regions,
        source,
        uffd,
        removed: Removed::default(),
        copied: 0,
        zeroed: 0,
    };
    let result = server.serve(&stream);
    say(&format!(
        "served {} faults ({} copied, {} zeroed)",
        server.copied + server.zeroed,
        server.copied,
        server.zeroed
    ));
    result
}

/// Maps the memory file read-only (pages come in as faults copy them).
fn map_file(file: &File, len: u64) -> Result<*const u8, HandlerError> {
    // SAFETY: a fresh private read-only mapping of `file`; nothing else is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(HandlerError::Io(
            "map the memory file",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(ptr.cast())
}

/// Polls `stream` (and `uffd`); true when the stream hung up, false when `uffd` is readable.
fn wait_for_hangup(stream: &UnixStream, uffd: Option<&File>) -> bool {
    let mut fds = vec![libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    if let Some(uffd) = uffd {
        fds.push(libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    loop {
        // SAFETY: poll reads and writes `fds`, which outlives the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            return true;
        }
        if fds.get(1).is_some_and(|f| f.revents != 0) {
            return false;
        }
    }
}

/// Disjoint address ranges `[start, end)`, by start; overlapping or adjacent ones merged.
#[derive(Debug, Default)]
struct Removed(BTreeMap<u64, u64>);

impl Removed {
    /// Adds `[start, end)`, merged with every range it overlaps or touches.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // The range starting at or before `start` that reaches it.
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Every range starting inside `[start, end]`.
        let inside: Vec<(u64, u64)> = self.0.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            self.0.remove(&s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    fn contains(&self, address: u64) -> bool {
        self.0
            .range(..=address)
            .next_back()
            .is_some_and(|(_, &end)| address < end)
    }
}

struct Server {
    regions: Vec<GuestRegionUffdMapping>,
    source: *const u8,
    uffd: File,
    /// Ranges the VMM removed (MADV_DONTNEED): faults there get zero pages.
    removed: Removed,
    copied: u64,
    zeroed: u64,
}

impl Server {
    fn serve(&mut self, stream: &UnixStream) -> Result<(), HandlerError> {
        loop {
            if wait_for_hangup(stream, Some(&self.uffd)) {
                return Ok(());
            }
            while let Some(msg) = self.next_event()? {
                match msg.event {
                    UFFD_EVENT_PAGEFAULT => self.fault(msg.arg1)?,
                    UFFD_EVENT_REMOVE | UFFD_EVENT_UNMAP => self.removed.insert(msg.arg0, msg.arg1),
                    _ => {}
                }
            }
        }
    }

    /// The next event, or None when there is none now (the userfaultfd is non-blocking).
    fn next_event(&self) -> Result<Option<UffdMsg>, HandlerError> {
        let mut msg = UffdMsg::default();
        // SAFETY: reads at most one uffd_msg into `msg`, which outlives the call.
        let n = unsafe {
            libc::read(
                self.uffd.as_raw_fd(),
                (&mut msg as *mut UffdMsg).cast(),
                std::mem::size_of::<UffdMsg>(),
            )
        };
        if n == std::mem::size_of::<UffdMsg>() as isize {
            return Ok(Some(msg));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(None),
            _ => Err(HandlerError::Io("read a userfaultfd event", err)),
        }
    }

    fn fault(&mut self, address: u64) -> Result<(), HandlerError> {
        let page = address & !4095;
        let region = self
            .regions
            .iter()
            .find(|r| page >= r.base_host_virt_addr && page - r.base_host_virt_addr < r.size as u64)
            .ok_or(HandlerError::FaultOutside(address))?;
        if self.copied + self.zeroed == 0 {
            say(&format!("first fault at {address:#x}"));
        }
        let removed = self.removed.contains(page);
        let result = if removed {
            let mut zero = UffdioZeropage {
                range: UffdioRange {
                    start: page,
                    len: 4096,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE reads and writes `zero`, which outlives the call.
            unsafe { ioctl_with_mut_ref(&self.uffd, UFFDIO_ZEROPAGE(), &mut zero) }
        } else {
            let offset = region.offset + (page - region.base_host_virt_addr);
            let mut copy = UffdioCopy {
                dst: page,
                // The region lies inside the file (checked at the handshake).
                src: self.source as u64 + offset,
                len: 4096,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads one page of our file mapping (inside it, checked at
            // the handshake) into the VMM's faulting page; it writes `copy`.
            unsafe { ioctl_with_mut_ref(&self.uffd, UFFDIO_COPY(), &mut copy) }
        };
        if result == 0 {
            match removed {
                true => self.zeroed += 1,
                false => self.copied += 1,
            }
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            // Filled already (EEXIST), or the VMM's memory is changing (EAGAIN: a remove is
            // queued): wake the faulting thread, which retries and faults again if the page
            // is still missing.
            Some(libc::EEXIST | libc::EAGAIN) => {
                let range = UffdioRange {
                    start: page,
                    len: 4096,
                };
                // SAFETY: UFFDIO_WAKE reads `range`, which outlives the call.
                unsafe { ioctl_with_ref(&self.uffd, UFFDIO_WAKE(), &range) };
                Ok(())
            }
            // The VMM is gone.
            Some(libc::ESRCH | libc::ENOENT) => Ok(()),
            _ => Err(HandlerError::Ioctl(
                if removed { "ZEROPAGE" } else { "COPY" },
                err,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Removed;

    #[test]
    fn removed_ranges_merge_so_repeated_events_do_not_grow_the_set() {
        let mut r = Removed::default();
        for _ in 0..10_000 {
            r.insert(0x1000, 0x3000);
        }
        assert_eq!(r.0.len(), 1);
        r.insert(0x5000, 0x6000);
        r.insert(0x3000, 0x4000); // touches the first
        assert_eq!(
            r.0.iter().collect::<Vec<_>>(),
            [(&0x1000, &0x4000), (&0x5000, &0x6000)]
        );
        r.insert(0x800, 0x5800); // spans both
        assert_eq!(r.0.iter().collect::<Vec<_>>(), [(&0x800, &0x6000)]);
        r.insert(0x9000, 0x9000); // empty
        assert_eq!(r.0.len(), 1);
        assert!(r.contains(0x800) && r.contains(0x5fff));
        assert!(!r.contains(0x7ff) && !r.contains(0x6000) && !r.contains(0x9000));
        // Alternate pages: at most half the pages as ranges.
        let mut alt = Removed::default();
        for page in (0..1024u64).step_by(2) {
            alt.insert(page << 12, (page + 1) << 12);
        }
        assert_eq!(alt.0.len(), 512);
        alt.insert(0, 1024 << 12);
        assert_eq!(alt.0.len(), 1);
    }
}
