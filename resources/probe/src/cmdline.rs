//! Kernel command line parsing: space-separated `key=value` words, the last one wins.

/// The value of the last `key=value` word, if any.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .rev()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix(b"="))
}

/// The non-empty items of a comma-separated list.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').filter(|item| !item.is_empty())
}
