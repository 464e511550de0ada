//! The device against mock queues and real Unix sockets in a temporary directory.
