//! The virtio-vsock device: the guest's AF_VSOCK stream sockets mediated to host AF_UNIX
//! sockets (Firecracker's contract), under Palisade's policy (ports, connection cap,
//! bandwidth).

pub mod config;
